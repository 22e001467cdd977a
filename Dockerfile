# syntax=docker/dockerfile:1
#
# The ploop-csi image: the `ploop-csi` command (CSI server, block daemon, gc, image tool) with
# its native ublk engine. Not built in this project's CI, which has no container engine.
#
# The base is pinned to an exact Node.js release; release builds should pin it by digest too:
#   docker build --build-arg NODE_IMAGE=node:20.20.2-bookworm-slim@sha256:<digest> .
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

FROM ${NODE_IMAGE} AS build
# fs-ext and the ublk engine are compiled from source; the engine links liburing statically.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 make g++ liburing-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN chown node:node /src
# Everything from here on, including the install scripts of dependencies, runs unprivileged.
USER node
COPY --chown=node:node package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY --chown=node:node tsconfig.json binding.gyp ./
COPY --chown=node:node csi-proto ./csi-proto
COPY --chown=node:node src ./src
RUN npm run build \
 && npm run build:native \
 && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE}
# util-linux: fallocate, unshare, mount, fsfreeze; e2fsprogs/xfsprogs: mkfs and grow;
# kmod: modprobe ublk_drv.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      util-linux e2fsprogs xfsprogs kmod \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ploop-csi
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/build/Release/ploop_ublk.node ./build/Release/ploop_ublk.node
COPY --from=build /src/csi-proto ./csi-proto
# `ploop-csi` on PATH, for `kubectl exec ... -- ploop-csi gc` and the `device` client.
RUN ln -s /opt/ploop-csi/dist/src/cli/main.js /usr/local/bin/ploop-csi \
 && chmod 0755 /opt/ploop-csi/dist/src/cli/main.js
# The CSI server and blockd run as root (mounts, device nodes, ublk): the Helm chart makes both
# containers privileged.
ENTRYPOINT ["node", "/opt/ploop-csi/dist/src/cli/main.js"]
CMD ["--help"]
