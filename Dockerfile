# syntax=docker/dockerfile:1
#
# The ploop-csi image: the `ploop-csi` command (CSI server, block daemon, image tool) with its
# native ublk engine. Not built in this project's CI, which has no container engine.

FROM node:20-bookworm-slim AS build
# fs-ext and the ublk engine are compiled from source; the engine links liburing statically.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 make g++ liburing-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN chown node:node /src
USER node
COPY --chown=node:node package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY --chown=node:node tsconfig.json binding.gyp ./
COPY --chown=node:node csi-proto ./csi-proto
COPY --chown=node:node src ./src
RUN npm run build \
 && npm run build:native \
 && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
# util-linux: fallocate, unshare, mount; e2fsprogs/xfsprogs: mkfs and grow; kmod: modprobe.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      util-linux e2fsprogs xfsprogs kmod \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ploop-csi
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/build/Release/ploop_ublk.node ./build/Release/ploop_ublk.node
COPY --from=build /src/csi-proto ./csi-proto
ENTRYPOINT ["node", "/opt/ploop-csi/dist/src/cli/main.js"]
CMD ["--help"]
