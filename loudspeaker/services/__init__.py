"""The use cases every face shares (CLI today; web page, HTTP API, SMS and alert feeds next).

One module per family of use cases. Each service function takes the service context
(:class:`~loudspeaker.services.context.ServiceContext`: where the data is, how the
controller hears of a change) and the acting identity (:class:`~loudspeaker.auth.Actor`),
checks the actor's permission (auditing a refusal), validates the request, writes,
audits, tells the running controller, and returns a typed result. Errors are
:class:`~loudspeaker.exceptions.LoudspeakerError` subclasses whose message says what to
fix. A service never prints, never exits and imports no face (Typer, Rich, a web
framework): a face authenticates the caller into an ``Actor``, translates its own
arguments into a service call, and renders the result.
"""
