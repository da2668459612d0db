"""The machine a run is on: devices and precision, processes and launchers, the host allocator."""
