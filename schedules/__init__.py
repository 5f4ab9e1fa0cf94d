"""When things play: programmes, priorities, quiet hours (APScheduler lives in the controller)."""
