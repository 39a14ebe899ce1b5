"""Widgets: each reads the app's `snapshot` / `connection` and draws one part of a screen."""
