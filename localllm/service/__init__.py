"""Running localllm as a system service: systemd unit, sd_notify and watchdog, logging."""
