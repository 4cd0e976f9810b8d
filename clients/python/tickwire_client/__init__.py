"""tickwire_client: an asyncio client for tickwire (PROTOCOL.md §1-§12).

    async with Client("ws://127.0.0.1:8080/ws") as c:
        await c.subscribe(["BTC-USD"], ["book", "trades"])
        async for ev in c.events({"book", "trade"}):
            ...
"""

from .book import Book, BookError, BookNotVerified, BookView, channel_depth, checksum, to_decimal
from .client import Client, ConnectionLost, Event, TickwireError, TradeView
from .messages import DecodeError, Instrument, parse_decimal

__all__ = [
    "Book",
    "BookError",
    "BookNotVerified",
    "BookView",
    "Client",
    "ConnectionLost",
    "DecodeError",
    "Event",
    "Instrument",
    "TickwireError",
    "TradeView",
    "channel_depth",
    "checksum",
    "parse_decimal",
    "to_decimal",
]
__version__ = "0.1.0"
