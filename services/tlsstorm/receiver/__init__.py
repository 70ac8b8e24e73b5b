"""The SMTP sink that offers STARTTLS and measures every session."""
