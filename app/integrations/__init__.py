"""Event hooks: a Telegram bot and help desks (Zendesk, a generic adapter) answered by inferq.

``inbound`` turns a checked webhook into an event and a prediction; ``outbox`` turns the
finished prediction into deliveries inside the batch's transaction; ``sender`` sends them with
retries. ``telegram``, ``zendesk`` and ``generic`` know each side's wire format; ``store`` is
what the API manages; ``secrets`` keeps credentials encrypted and out of logs.
"""
