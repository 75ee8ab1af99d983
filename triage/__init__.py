"""triage: AI triage for tele-radiology worklists."""
__version__ = "0.1.0"
