"""The botnet emulator: sends plain or STARTTLS mail on command or in waves."""
