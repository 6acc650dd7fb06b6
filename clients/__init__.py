"""tickwire's reference client: everything PROTOCOL.md asks of a client.

Import from the modules; this package file imports nothing, so that importing a pure
module never pulls in trio or sockets.

Pure (sans-IO):
    ``clients.book``          ``ClientBook``: snapshot/update apply, chain and checksum checks
    ``clients.subscription``  ``BookSubscription`` state machine, ``SeqTracker``
    ``clients.session``       ``ClientSession``: subscriptions, counters, requests to send
    ``clients.messages``      typed views of the checked messages
    ``clients.codec``         frames to messages (batches flattened), requests to text
    ``clients.backoff``       ``Backoff``: capped, jittered exponential delays
    ``clients.view``          text and ANSI rendering for the terminal view
    ``clients.errors``        the exception tree

With IO (trio):
    ``clients.client``        ``connect()`` / ``Connection`` over wsproto
    ``clients.keeper``        ``BookKeeper``: resync, reconnect, resubscribe
    ``clients.subscribe``     ``run_subscribe`` / ``main``: the ``tickwire subscribe`` view
    ``clients.recorder``      ``UrlRecorder``: ``tickwire record DIR --url URL``
"""
