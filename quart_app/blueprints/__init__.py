"""The app's own controllers, one blueprint per concern: add yours here."""
