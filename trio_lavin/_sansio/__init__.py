"""The pure AMQP 0-9-1 client machine: bytes in, events out, bytes out.

Nothing in this package imports trio, reads a clock or does I/O; time comes in
as ``now: float`` arguments and deadlines go out as floats.
"""
