"""When things play: rules, programmes, priorities, quiet hours, the timeline (pure calendar).

Imports nothing of ``loudspeaker``: the stored schedules live in
``loudspeaker.schedule_store``, the use cases in ``loudspeaker.services.schedules``.
"""
