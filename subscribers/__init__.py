"""The audience: subscribers, consent, tokens, import and export. Imports nothing from pipeline."""
