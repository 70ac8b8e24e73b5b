"""What every tlsstorm service shares, written once."""
