"""Service templates (a macOS LaunchAgent and a systemd user unit), installed as meshd.launchd."""
