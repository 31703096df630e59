"""Generated protobuf/gRPC code for sovledger (made by ``make proto``) and the wire constants that
travel beside it in gRPC metadata. Node and clients both take these names from here, so each key is
spelled once."""

#: Trailing metadata: ``host:port`` of the region's leader when a node answers REASON_NOT_LEADER.
LEADER_METADATA_KEY = "sovledger-leader"
#: Trailing metadata: the ``ErrorReason`` enum value's name (e.g. ``REASON_STORE_FULL``).
REASON_METADATA_KEY = "sovledger-reason"
#: Trailing metadata: milliseconds a rate-limited PSP should wait before retrying (REASON_RATE_LIMITED).
RETRY_AFTER_METADATA_KEY = "sovledger-retry-after-ms"
#: Call metadata a Submit client sends (value ``ANSWERS_BATCHED``) to accept several answers per
#: response message: a response then answers its own request and, in ``more``, the next requests of
#: the stream whose outcomes are already known, in request order (docs/formats.md, "Submit answers").
ANSWERS_METADATA_KEY = "sovledger-answers"
ANSWERS_BATCHED = "batched"
