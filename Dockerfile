# syntax=docker/dockerfile:1
#
# Image with the ploop-csi command line. In this version that is the offline
# image tool (`ploop-csi image ...`); the CSI server and the block daemon are
# not part of it yet.

FROM node:20-bookworm-slim AS build
WORKDIR /src
RUN chown node:node /src
USER node
COPY --chown=node:node package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY --chown=node:node tsconfig.json ./
COPY --chown=node:node csi-proto ./csi-proto
COPY --chown=node:node src ./src
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
# flock and fallocate are used on the pool directory.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends util-linux \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ploop-csi
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/csi-proto ./csi-proto
ENTRYPOINT ["node", "/opt/ploop-csi/dist/src/cli/main.js"]
CMD ["--help"]
