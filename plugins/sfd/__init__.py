"""SFD: simple and fast distillation (entry point ``sfd``)."""
