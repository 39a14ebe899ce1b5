"""The app's screens: dashboard, chat, models (modes) and the help overlay."""
