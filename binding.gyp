{
  "targets": [
    {
      "target_name": "ploop_ublk",
      "sources": [
        "src/blockdev/native/addon.c",
        "src/blockdev/native/ctrl.c",
        "src/blockdev/native/device.c",
        "src/blockdev/native/ploop.c",
        "src/blockdev/native/queue.c",
        "src/blockdev/native/stats.c"
      ],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2", "-pthread"],
      "libraries": ["-l:liburing.a", "-pthread"]
    }
  ]
}
