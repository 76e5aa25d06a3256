"""The app's controllers, one blueprint per concern."""
