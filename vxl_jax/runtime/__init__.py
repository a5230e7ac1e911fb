"""Runtime: device meshes and sharding rules, multi-process start-up, the compilation cache."""
