#!/usr/bin/env python3
"""Fill the lab's trading database with realistic generated data.

Run on the database host as the application role (the table owner), after
roles/postgresql/files/trading_schema.sql has created the tables. The program
generates, relative to the server's now():

- instruments (equities, FX pairs, crypto) and strategies trading them;
- tick_data spread evenly over the last --days days (default 45), one
  geometric random walk per instrument, with bid < price < ask;
- 1m, 1h and 1d ohlc_candles aggregated from those ticks in SQL;
- orders with one order_history row per status change, and open and closed
  positions, priced from the tick random walk;
- order_book_snapshots over the last 10 days and system_logs over the last
  120 days;
- backtest_results, 150 runs for each of the first three strategies and 40
  for each of the others, and 90 days of strategy_performance rows;
- three broker_credentials with random bytes in place of the ciphertext,
  and a few system_alerts.

The spans straddle the retention rules so that each rule has rows to delete
and rows to keep: tick_data keeps 30 days, order_book_snapshots 7 days,
system_logs 90 days, and backtest_results the newest 100 runs per strategy.

Everything is loaded with COPY, streamed in chunks so memory stays bounded,
in one transaction: a failed run leaves no partial data. If tick_data already
has rows and --reset is not given, the program changes nothing and exits 0,
so a playbook can run it on every converge. The last line on stdout is JSON:
{"changed": bool, "rows": {table: count}, "seconds": float}. Progress goes to
stderr. The connection uses libpq's environment and defaults (PGHOST, PGPORT,
PGUSER, PGDATABASE, ~/.pgpass) unless --dsn is given.

Needs only the standard library and psycopg2 (Debian 12: python3 3.11 and
python3-psycopg2).
"""

import argparse
import array
import bisect
import datetime
import json
import logging
import math
import random
import sys
import time

import psycopg2
import psycopg2.extensions

log = logging.getLogger("generate_trading_data")

# Tables in the order they are loaded, which satisfies the foreign keys.
GENERATED_TABLES = (
    "instruments",
    "strategies",
    "tick_data",
    "ohlc_candles",
    "orders",
    "order_history",
    "positions",
    "order_book_snapshots",
    "backtest_results",
    "system_logs",
    "strategy_performance",
    "broker_credentials",
    "system_alerts",
)

# Key for pg_advisory_xact_lock, so that two concurrent runs do not both
# see an empty database and load it twice.
ADVISORY_LOCK_KEY = 7305861204

DAY = 86400.0
ORDER_BOOK_DAYS = 10
SYSTEM_LOG_DAYS = 120
BACKTEST_DAYS = 180
PERFORMANCE_DAYS = 90
ALERT_DAYS = 30
BOOK_LEVELS = 10
# The price of every PRICE_SAMPLE_EVERY-th tick is kept to price orders and books.
PRICE_SAMPLE_EVERY = 10
COPY_READ_SIZE = 1 << 16

# symbol, exchange, asset class, currency, tick size, start price,
# daily volatility (fraction), half spread (fraction of price).
INSTRUMENT_CATALOG = (
    ("AAPL", "NASDAQ", "equity", "USD", 0.01, 189.0, 0.016, 0.00005),
    ("MSFT", "NASDAQ", "equity", "USD", 0.01, 415.0, 0.015, 0.00005),
    ("AMZN", "NASDAQ", "equity", "USD", 0.01, 178.0, 0.020, 0.00006),
    ("NVDA", "NASDAQ", "equity", "USD", 0.01, 880.0, 0.032, 0.00006),
    ("GOOGL", "NASDAQ", "equity", "USD", 0.01, 152.0, 0.018, 0.00006),
    ("META", "NASDAQ", "equity", "USD", 0.01, 490.0, 0.024, 0.00006),
    ("TSLA", "NASDAQ", "equity", "USD", 0.01, 175.0, 0.035, 0.00008),
    ("AMD", "NASDAQ", "equity", "USD", 0.01, 165.0, 0.030, 0.00008),
    ("NFLX", "NASDAQ", "equity", "USD", 0.01, 610.0, 0.022, 0.00008),
    ("INTC", "NASDAQ", "equity", "USD", 0.01, 35.0, 0.020, 0.00015),
    ("JPM", "NYSE", "equity", "USD", 0.01, 195.0, 0.012, 0.00006),
    ("BAC", "NYSE", "equity", "USD", 0.01, 37.0, 0.014, 0.00015),
    ("XOM", "NYSE", "equity", "USD", 0.01, 118.0, 0.014, 0.00008),
    ("JNJ", "NYSE", "equity", "USD", 0.01, 155.0, 0.009, 0.00008),
    ("V", "NYSE", "equity", "USD", 0.01, 275.0, 0.011, 0.00006),
    ("WMT", "NYSE", "equity", "USD", 0.01, 60.0, 0.010, 0.00010),
    ("KO", "NYSE", "equity", "USD", 0.01, 61.0, 0.008, 0.00010),
    ("DIS", "NYSE", "equity", "USD", 0.01, 112.0, 0.017, 0.00010),
    ("BA", "NYSE", "equity", "USD", 0.01, 185.0, 0.022, 0.00010),
    ("SPY", "NYSEARCA", "equity", "USD", 0.01, 520.0, 0.008, 0.00002),
    ("QQQ", "NASDAQ", "equity", "USD", 0.01, 445.0, 0.010, 0.00002),
    ("IWM", "NYSEARCA", "equity", "USD", 0.01, 205.0, 0.012, 0.00003),
    ("SAP", "XETRA", "equity", "EUR", 0.01, 180.0, 0.014, 0.00008),
    ("SIE", "XETRA", "equity", "EUR", 0.02, 175.0, 0.015, 0.00010),
    ("ASML", "EURONEXT", "equity", "EUR", 0.10, 880.0, 0.022, 0.00010),
    ("EUR/USD", "FXCM", "fx", "USD", 0.00001, 1.0850, 0.005, 0.00004),
    ("GBP/USD", "FXCM", "fx", "USD", 0.00001, 1.2650, 0.005, 0.00005),
    ("USD/JPY", "FXCM", "fx", "JPY", 0.001, 151.50, 0.006, 0.00004),
    ("USD/CHF", "FXCM", "fx", "CHF", 0.00001, 0.9050, 0.005, 0.00006),
    ("AUD/USD", "FXCM", "fx", "USD", 0.00001, 0.6550, 0.007, 0.00006),
    ("USD/CAD", "FXCM", "fx", "CAD", 0.00001, 1.3550, 0.005, 0.00006),
    ("EUR/GBP", "FXCM", "fx", "GBP", 0.00001, 0.8570, 0.004, 0.00007),
    ("BTC-USD", "COINBASE", "crypto", "USD", 0.01, 64000.0, 0.035, 0.00005),
    ("ETH-USD", "COINBASE", "crypto", "USD", 0.01, 3200.0, 0.040, 0.00006),
    ("SOL-USD", "COINBASE", "crypto", "USD", 0.01, 150.0, 0.055, 0.00010),
    ("XRP-USD", "COINBASE", "crypto", "USD", 0.0001, 0.52, 0.045, 0.00015),
    ("ADA-USD", "COINBASE", "crypto", "USD", 0.0001, 0.46, 0.050, 0.00020),
    ("DOGE-USD", "COINBASE", "crypto", "USD", 0.00001, 0.15, 0.060, 0.00020),
    ("LTC-USD", "KRAKEN", "crypto", "USD", 0.01, 85.0, 0.045, 0.00015),
    ("LINK-USD", "KRAKEN", "crypto", "USD", 0.001, 17.5, 0.055, 0.00020),
)

# Strategy name and kind, which is stored in the strategy's config.
STRATEGY_CATALOG = (
    ("momentum_equities", "momentum"),
    ("mean_reversion_fx", "mean_reversion"),
    ("btc_breakout", "breakout"),
    ("pairs_tech", "pairs"),
    ("market_making_crypto", "market_making"),
    ("vwap_execution", "execution"),
    ("trend_following_etf", "momentum"),
    ("stat_arb_banks", "pairs"),
    ("carry_fx", "mean_reversion"),
    ("volatility_breakout", "breakout"),
)

LOG_SOURCES = (
    "market-data",
    "order-router",
    "risk-engine",
    "strategy-runner",
    "broker-gateway",
    "scheduler",
)

# level, relative frequency, message templates.
LOG_LEVELS = (
    ("debug", 15, ("heartbeat from %(source)s", "cache refreshed for %(symbol)s")),
    ("info", 70, (
        "order %(order)d submitted for %(symbol)s",
        "order %(order)d filled for %(symbol)s",
        "subscribed to %(symbol)s quotes",
        "strategy %(strategy)s evaluated in %(ms)d ms",
    )),
    ("warning", 10, (
        "quote feed for %(symbol)s delayed by %(ms)d ms",
        "order %(order)d retried after broker timeout",
    )),
    ("error", 4, (
        "broker rejected order %(order)d: insufficient buying power",
        "market data gap of %(ms)d ms on %(symbol)s",
    )),
    ("critical", 1, ("lost connection to broker after %(ms)d ms",)),
)

ALERT_TYPES = (
    ("latency", "warning", "order round trip above 250 ms for %d minutes"),
    ("broker_disconnect", "critical", "broker session dropped, reconnected after %d s"),
    ("risk_limit", "warning", "strategy exposure at %d %% of its limit"),
    ("data_gap", "warning", "no ticks received for %d s on a subscribed instrument"),
    ("disk_usage", "info", "database volume at %d %% of capacity"),
    ("token_expiry", "info", "broker token expires in %d hours"),
)


class Instrument:
    """One instrument's static data and a sample of its generated prices."""

    def __init__(self, id_, symbol, exchange, asset_class, currency, tick_size,
                 start_price, daily_volatility, half_spread):
        self.id = id_
        self.symbol = symbol
        self.exchange = exchange
        self.asset_class = asset_class
        self.currency = currency
        self.tick_size = tick_size
        self.decimals = max(0, -int(math.floor(math.log10(tick_size) + 1e-9)))
        self.start_price = start_price
        self.daily_volatility = daily_volatility
        self.half_spread = half_spread
        self.sample_times = array.array("d")
        self.sample_prices = array.array("d")

    def price_at(self, epoch):
        """Return the sampled tick price at or just before epoch seconds."""
        index = bisect.bisect_right(self.sample_times, epoch) - 1
        return self.sample_prices[max(index, 0)]

    def last_price(self):
        return self.sample_prices[-1]

    def format_price(self, price):
        return "%.*f" % (self.decimals, price)

    def random_quantity(self, rng):
        """Return an order quantity in this instrument's usual lot sizes."""
        if self.asset_class == "fx":
            return 1000 * rng.randint(1, 500)
        if self.asset_class == "crypto":
            notional = rng.uniform(100.0, 20000.0)
            return max(round(notional / self.start_price, 4), 0.0001)
        return rng.randint(1, 50) * rng.choice((1, 1, 5, 10, 100))


class LineStream:
    """File-like reader over an iterable of text chunks, for copy_expert.

    The chunks are produced only as COPY reads them, so the whole table never
    sits in memory, and the server parses one chunk while this process
    generates the next.
    """

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._pending = ""

    def read(self, size=-1):
        """Return up to size characters, or everything left if size < 0."""
        parts = [self._pending]
        length = len(self._pending)
        while size < 0 or length < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            parts.append(chunk)
            length += len(chunk)
        data = "".join(parts)
        if size < 0 or length <= size:
            self._pending = ""
            return data
        self._pending = data[size:]
        return data[:size]


def copy_escape(text):
    """Escape text for a field of COPY's text format."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t")
            .replace("\n", "\\n").replace("\r", "\\r"))


def format_timestamp(epoch):
    """Format epoch seconds as a UTC timestamptz literal with microseconds."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def to_json(value):
    return copy_escape(json.dumps(value, separators=(",", ":")))


def copy_rows(cursor, table, columns, chunks):
    """Stream chunks of COPY text lines into table and return the row count."""
    sql = "COPY %s (%s) FROM STDIN WITH (FREEZE)" % (table, ", ".join(columns))
    cursor.copy_expert(sql, LineStream(chunks), size=COPY_READ_SIZE)
    return cursor.rowcount


def batched(lines, batch_size=2000):
    """Join an iterable of lines into text chunks of batch_size lines."""
    batch = []
    for line in lines:
        batch.append(line)
        if len(batch) >= batch_size:
            yield "".join(batch)
            batch = []
    if batch:
        yield "".join(batch)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Generate realistic trading data in the lab database. "
                    "Connects with libpq's environment (PGHOST, PGPORT, PGUSER, "
                    "PGDATABASE, ~/.pgpass) unless --dsn is given.")
    parser.add_argument(
        "--dsn", default="",
        help="libpq connection string without a password, for example "
             "'host=/run/postgresql dbname=trading_db' (default: libpq "
             "environment and defaults)")
    parser.add_argument(
        "--ticks", type=positive_int, default=1_000_000,
        help="number of tick_data rows, in rows (default: %(default)s)")
    parser.add_argument(
        "--days", type=positive_int, default=45,
        help="tick history ending now, in days. More than 30 puts ticks on "
             "both sides of the 30-day retention (default: %(default)s)")
    parser.add_argument(
        "--instruments", type=positive_int, default=40,
        help="number of instruments, a count (default: %(default)s)")
    parser.add_argument(
        "--strategies", type=positive_int, default=8,
        help="number of strategies, a count (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=20240501,
        help="random seed, an integer. Equal seeds give equal rows apart "
             "from the timestamps, which follow now(), and the candle counts "
             "that depend on them (default: %(default)s)")
    parser.add_argument(
        "--reset", action="store_true",
        help="truncate the generated tables and load them again even if "
             "tick_data already has rows")
    args = parser.parse_args(argv)

    if args.ticks < args.instruments:
        parser.error("--ticks (%d) must be at least --instruments (%d) so "
                     "that every instrument has a price" % (args.ticks, args.instruments))

    try:
        dsn_options = psycopg2.extensions.parse_dsn(args.dsn)
    except psycopg2.ProgrammingError as error:
        parser.error("invalid --dsn: %s" % str(error).strip())
    if "password" in dsn_options:
        parser.error("--dsn must not contain a password. Use ~/.pgpass or "
                     "PGPASSFILE instead")
    return args


def positive_int(text):
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % text)
    return value


# ---------------------------------------------------------------------------
# Instruments and strategies


def build_instruments(count, rng):
    """Return count Instruments, from the catalog first, then synthetic ones."""
    instruments = []
    for index in range(count):
        if index < len(INSTRUMENT_CATALOG):
            row = INSTRUMENT_CATALOG[index]
        else:
            symbol = "LAB%03d" % (index + 1)
            row = (symbol, "NYSE", "equity", "USD", 0.01,
                   round(rng.uniform(10.0, 300.0), 2), rng.uniform(0.01, 0.03), 0.0001)
        instruments.append(Instrument(index + 1, *row))
    return instruments


def load_instruments(cursor, instruments, now):
    def lines():
        for instrument in instruments:
            yield "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" % (
                instrument.id, instrument.symbol, instrument.exchange,
                instrument.asset_class, instrument.currency,
                instrument.format_price(instrument.tick_size), 1,
                format_timestamp(now - 400 * DAY))
    return copy_rows(cursor, "instruments",
                     ("id", "symbol", "exchange", "asset_class", "currency",
                      "tick_size", "lot_size", "created_at"), batched(lines()))


def build_strategies(count, instruments, now, rng):
    """Return strategy dicts, each trading a few instruments."""
    strategies = []
    for index in range(count):
        if index < len(STRATEGY_CATALOG):
            name, kind = STRATEGY_CATALOG[index]
        else:
            name, kind = "lab_strategy_%02d" % (index + 1), "momentum"
        universe = rng.sample(instruments, min(len(instruments), rng.randint(2, 6)))
        config = {
            "kind": kind,
            "instruments": [inst.symbol for inst in universe],
            "lookback_minutes": rng.choice((5, 15, 60, 240)),
            "entry_threshold": round(rng.uniform(0.5, 3.0), 2),
            "max_position_usd": rng.choice((10000, 25000, 50000, 100000)),
            "stop_loss_pct": round(rng.uniform(0.5, 5.0), 1),
        }
        strategies.append({
            "id": index + 1,
            "name": name,
            "config": config,
            "universe": universe,
            "is_active": index % 4 != 3,
            "created_at": now - rng.uniform(200, 400) * DAY,
        })
    return strategies


def load_strategies(cursor, strategies):
    def lines():
        for strategy in strategies:
            yield "%d\t%s\t%s\t%s\t%s\n" % (
                strategy["id"], strategy["name"], to_json(strategy["config"]),
                "t" if strategy["is_active"] else "f",
                format_timestamp(strategy["created_at"]))
    return copy_rows(cursor, "strategies",
                     ("id", "name", "config", "is_active", "created_at"),
                     batched(lines()))


# ---------------------------------------------------------------------------
# Ticks and candles


def split_ticks(total, instruments, rng):
    """Split total ticks over instruments, busier ones getting more."""
    weights = [rng.uniform(0.5, 1.5) for _ in instruments]
    scale = total / sum(weights)
    counts = [max(1, int(weight * scale)) for weight in weights]
    index = 0
    while sum(counts) != total:
        step = 1 if sum(counts) < total else -1
        if counts[index] + step >= 1:
            counts[index] += step
        index = (index + 1) % len(counts)
    return counts


def generate_ticks(instrument, count, start, span, rng):
    """Yield COPY chunks of count ticks between start and start + span.

    Ticks are evenly spaced with jitter, so their times are increasing. The
    price follows a geometric random walk rounded to the tick size, and the
    bid and ask sit at least one tick below and above it.
    """
    step = span / count
    sigma = instrument.daily_volatility * math.sqrt(step / DAY)
    tick = instrument.tick_size
    decimals = instrument.decimals
    spread_ticks = max(1.0, instrument.start_price * instrument.half_spread / tick)
    price = instrument.start_price
    # Keep the price far above the spread so bid stays positive.
    min_ticks = int(4 * spread_ticks) + 10
    if instrument.asset_class == "fx":
        mean_volume, volume_format = 250000.0, "%.0f"
    elif instrument.asset_class == "crypto":
        mean_volume, volume_format = 5000.0 / instrument.start_price, "%.4f"
    else:
        mean_volume, volume_format = 150.0, "%.0f"

    gauss = rng.gauss
    uniform = rng.random
    expovariate = rng.expovariate
    exp = math.exp
    dates = {}
    lines = []
    instrument_id = instrument.id
    sample_times = instrument.sample_times
    sample_prices = instrument.sample_prices
    for k in range(count):
        epoch = start + (k + uniform()) * step
        price *= exp(sigma * gauss(0.0, 1.0))
        price_ticks = round(price / tick)
        if price_ticks < min_ticks:
            price_ticks = min_ticks
            price = price_ticks * tick
        bid_ticks = price_ticks - 1 - int(spread_ticks * uniform())
        ask_ticks = price_ticks + 1 + int(spread_ticks * uniform())
        volume = expovariate(1.0 / mean_volume) + 1.0

        micros = int(epoch * 1e6)
        seconds, fraction = divmod(micros, 1_000_000)
        day, second_of_day = divmod(seconds, 86400)
        date_text = dates.get(day)
        if date_text is None:
            date_text = datetime.date.fromordinal(719163 + day).isoformat()
            dates[day] = date_text
        hour, rest = divmod(second_of_day, 3600)
        minute, second = divmod(rest, 60)
        lines.append("%d\t%s %02d:%02d:%02d.%06d+00\t%.*f\t%s\t%.*f\t%.*f\n" % (
            instrument_id, date_text, hour, minute, second, fraction,
            decimals, price_ticks * tick, volume_format % volume,
            decimals, bid_ticks * tick, decimals, ask_ticks * tick))

        if k % PRICE_SAMPLE_EVERY == 0:
            sample_times.append(epoch)
            sample_prices.append(price_ticks * tick)
        if len(lines) >= 2000:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def load_ticks(cursor, instruments, total, days, now, rng):
    counts = split_ticks(total, instruments, rng)
    span = days * DAY
    start = now - span

    def chunks():
        for instrument, count in zip(instruments, counts):
            yield from generate_ticks(instrument, count, start, span, rng)

    return copy_rows(cursor, "tick_data",
                     ("instrument_id", "time", "price", "volume", "bid", "ask"),
                     chunks())


CANDLES_FROM_TICKS = """
INSERT INTO ohlc_candles (instrument_id, timeframe, time, open, high, low, close, volume)
SELECT instrument_id, '1m', date_trunc('minute', time),
       (array_agg(price ORDER BY time))[1], max(price), min(price),
       (array_agg(price ORDER BY time DESC))[1], sum(volume)
FROM tick_data
GROUP BY instrument_id, date_trunc('minute', time)
"""

# Longer candles roll up the 1m ones, which gives the same values as
# aggregating the ticks again in a fraction of the time.
CANDLES_FROM_MINUTES = """
INSERT INTO ohlc_candles (instrument_id, timeframe, time, open, high, low, close, volume)
SELECT instrument_id, %(timeframe)s, date_trunc(%(unit)s, time),
       (array_agg(open ORDER BY time))[1], max(high), min(low),
       (array_agg(close ORDER BY time DESC))[1], sum(volume)
FROM ohlc_candles
WHERE timeframe = '1m'
GROUP BY instrument_id, date_trunc(%(unit)s, time)
"""


def load_candles(cursor):
    cursor.execute(CANDLES_FROM_TICKS)
    rows = cursor.rowcount
    for timeframe, unit in (("1h", "hour"), ("1d", "day")):
        cursor.execute(CANDLES_FROM_MINUTES, {"timeframe": timeframe, "unit": unit})
        rows += cursor.rowcount
    return rows


# ---------------------------------------------------------------------------
# Orders and positions

TERMINAL_STATUSES = (("filled", 0.74), ("cancelled", 0.20), ("rejected", 0.06))
OPEN_STATUSES = ("pending", "submitted", "partially_filled")
ORDER_TYPES = (("market", 0.45), ("limit", 0.40), ("stop", 0.10), ("stop_limit", 0.05))


def weighted_choice(rng, pairs):
    values = [value for value, _ in pairs]
    weights = [weight for _, weight in pairs]
    return rng.choices(values, weights)[0]


def order_status_changes(status, created, quantity, fill_price, rng):
    """Return the (status, epoch, details) changes that end in status."""
    changes = [("pending", created, None)]
    moment = created + rng.uniform(0.005, 0.2)
    if status == "pending":
        return changes
    if status == "rejected":
        reason = rng.choice(("insufficient buying power", "market closed",
                             "price outside collar", "risk limit exceeded"))
        return changes + [("rejected", moment, {"reason": reason})]
    changes.append(("submitted", moment, {"broker_order_id": "B%010d" % rng.randrange(10**10)}))
    partial = status == "partially_filled" or (status != "submitted" and rng.random() < 0.25)
    if partial:
        moment += rng.uniform(0.05, 30.0)
        filled = quantity * rng.uniform(0.1, 0.9)
        changes.append(("partially_filled", moment,
                        {"filled_quantity": round(filled, 4), "fill_price": fill_price}))
    if status == "filled":
        moment += rng.uniform(0.05, 60.0)
        changes.append(("filled", moment,
                        {"filled_quantity": quantity, "fill_price": fill_price}))
    elif status == "cancelled":
        moment += rng.uniform(1.0, 3600.0)
        changes.append(("cancelled", moment, {"reason": "cancelled by strategy"}))
    return changes


def build_orders(count, strategies, span_start, now, rng):
    """Return order dicts sorted by creation time, each with its status changes."""
    orders = []
    for _ in range(count):
        strategy = rng.choice(strategies)
        instrument = rng.choice(strategy["universe"])
        created = rng.uniform(max(span_start, strategy["created_at"]), now - 1.0)
        # Orders of the last hour may still be open at the broker.
        if created > now - 3600 and rng.random() < 0.6:
            status = rng.choice(OPEN_STATUSES)
        else:
            status = weighted_choice(rng, TERMINAL_STATUSES)
        order_type = weighted_choice(rng, ORDER_TYPES)
        market_price = instrument.price_at(created)
        quantity = instrument.random_quantity(rng)
        side = rng.choice(("buy", "sell"))
        limit_price = None
        if order_type != "market":
            offset = rng.uniform(0.0005, 0.01) * (-1 if side == "buy" else 1)
            limit_price = market_price * (1.0 + offset)
        fill_price = instrument.format_price(limit_price or market_price)
        changes = order_status_changes(status, created, quantity, float(fill_price), rng)
        # Keep every change in the past, which also bounds updated_at.
        changes = [(name, min(moment, now), details) for name, moment, details in changes]
        orders.append({
            "strategy_id": strategy["id"],
            "instrument": instrument,
            "side": side,
            "order_type": order_type,
            "quantity": quantity,
            "price": limit_price,
            "status": status,
            "created_at": created,
            "changes": changes,
        })
    orders.sort(key=lambda order: order["created_at"])
    for order_id, order in enumerate(orders, start=1):
        order["id"] = order_id
    return orders


def load_orders(cursor, orders):
    def lines():
        for order in orders:
            instrument = order["instrument"]
            price = "\\N" if order["price"] is None else instrument.format_price(order["price"])
            yield "%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" % (
                order["id"], order["strategy_id"], instrument.id, order["side"],
                order["order_type"], order["quantity"], price, order["status"],
                format_timestamp(order["created_at"]),
                format_timestamp(order["changes"][-1][1]))
    return copy_rows(cursor, "orders",
                     ("id", "strategy_id", "instrument_id", "side", "order_type",
                      "quantity", "price", "status", "created_at", "updated_at"),
                     batched(lines()))


def load_order_history(cursor, orders):
    def lines():
        for order in orders:
            for status, moment, details in order["changes"]:
                yield "%d\t%s\t%s\t%s\n" % (
                    order["id"], status, format_timestamp(moment),
                    "\\N" if details is None else to_json(details))
    return copy_rows(cursor, "order_history",
                     ("order_id", "status", "changed_at", "details"), batched(lines()))


def load_positions(cursor, count, strategies, span_start, now, rng):
    """Load closed positions over the tick span and a few open ones per strategy."""
    def lines():
        for _ in range(count):
            strategy = rng.choice(strategies)
            instrument = rng.choice(strategy["universe"])
            opened = rng.uniform(max(span_start, strategy["created_at"]), now - 7200)
            closed = min(opened + rng.uniform(300, 3 * DAY), now - 60)
            quantity = instrument.random_quantity(rng) * rng.choice((1, -1))
            entry = instrument.price_at(opened)
            exit_price = instrument.price_at(closed)
            yield "%d\t%d\t%s\t%s\t%s\t%s\t%.8f\t0\n" % (
                strategy["id"], instrument.id, quantity, instrument.format_price(entry),
                format_timestamp(opened), format_timestamp(closed),
                quantity * (exit_price - entry))
        for strategy in strategies:
            if not strategy["is_active"]:
                continue
            for instrument in strategy["universe"][:rng.randint(1, 3)]:
                opened = rng.uniform(now - 5 * DAY, now - 600)
                quantity = instrument.random_quantity(rng) * rng.choice((1, -1))
                entry = instrument.price_at(opened)
                yield "%d\t%d\t%s\t%s\t%s\t\\N\t0\t%.8f\n" % (
                    strategy["id"], instrument.id, quantity, instrument.format_price(entry),
                    format_timestamp(opened), quantity * (instrument.last_price() - entry))
    return copy_rows(cursor, "positions",
                     ("strategy_id", "instrument_id", "quantity", "avg_price", "opened_at",
                      "closed_at", "realized_pnl", "unrealized_pnl"), batched(lines()))


# ---------------------------------------------------------------------------
# Order book, backtests, logs, performance, credentials and alerts


def book_side(instrument, best, direction, rng):
    """Return BOOK_LEVELS [price, size] levels from best outwards as JSON text."""
    levels = []
    price = best
    for _ in range(BOOK_LEVELS):
        size = instrument.random_quantity(rng) * rng.uniform(0.5, 4.0)
        if instrument.asset_class == "crypto":
            size_text = "%.4f" % size
        else:
            size_text = "%d" % max(1, size)
        levels.append("[%s,%s]" % (instrument.format_price(price), size_text))
        price += direction * instrument.tick_size * rng.randint(1, 3)
    return "[" + ",".join(levels) + "]"


def load_order_book_snapshots(cursor, count, instruments, now, rng):
    span = ORDER_BOOK_DAYS * DAY
    per_instrument = max(1, count // len(instruments))

    def lines():
        for instrument in instruments:
            step = span / per_instrument
            for k in range(per_instrument):
                moment = now - span + (k + rng.random()) * step
                mid = instrument.price_at(moment)
                half = max(instrument.tick_size, mid * instrument.half_spread)
                yield "%d\t%s\t%s\t%s\n" % (
                    instrument.id, format_timestamp(moment),
                    book_side(instrument, mid - half, -1, rng),
                    book_side(instrument, mid + half, 1, rng))
    return copy_rows(cursor, "order_book_snapshots",
                     ("instrument_id", "time", "bids", "asks"), batched(lines(), 500))


def load_backtest_results(cursor, strategies, now, rng):
    """Load 150 runs for the first three strategies and 40 for the others."""
    def lines():
        for index, strategy in enumerate(strategies):
            runs = 150 if index < 3 else 40
            for _ in range(runs):
                moment = now - rng.uniform(0, BACKTEST_DAYS) * DAY
                window_end = datetime.date.fromtimestamp(moment) - datetime.timedelta(days=1)
                params = {
                    "start": (window_end - datetime.timedelta(days=rng.choice((30, 90, 365)))).isoformat(),
                    "end": window_end.isoformat(),
                    "lookback_minutes": rng.choice((5, 15, 60, 240)),
                    "entry_threshold": round(rng.uniform(0.5, 3.0), 2),
                    "fees_bps": rng.choice((0.5, 1, 2)),
                }
                yield "%d\t%s\t%s\t%.6f\t%.6f\t%.6f\t%d\n" % (
                    strategy["id"], format_timestamp(moment), to_json(params),
                    rng.gauss(0.04, 0.15), rng.gauss(0.8, 0.7),
                    abs(rng.gauss(0.08, 0.06)), rng.randint(10, 3000))
    return copy_rows(cursor, "backtest_results",
                     ("strategy_id", "created_at", "params", "total_return",
                      "sharpe_ratio", "max_drawdown", "trades"), batched(lines()))


def load_system_logs(cursor, count, instruments, strategies, order_count, now, rng):
    levels = [level for level, _, _ in LOG_LEVELS]
    weights = [weight for _, weight, _ in LOG_LEVELS]
    templates = {level: messages for level, _, messages in LOG_LEVELS}

    def lines():
        for level in rng.choices(levels, weights, k=count):
            source = rng.choice(LOG_SOURCES)
            message = rng.choice(templates[level]) % {
                "source": source,
                "symbol": rng.choice(instruments).symbol,
                "strategy": rng.choice(strategies)["name"],
                "order": rng.randint(1, max(order_count, 1)),
                "ms": rng.randint(1, 5000),
            }
            moment = now - rng.uniform(0, SYSTEM_LOG_DAYS) * DAY
            yield "%s\t%s\t%s\t%s\n" % (format_timestamp(moment), level, source,
                                         copy_escape(message))
    return copy_rows(cursor, "system_logs",
                     ("created_at", "level", "source", "message"), batched(lines()))


def load_strategy_performance(cursor, strategies, now, rng):
    today = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc).date()

    def lines():
        for strategy in strategies:
            for offset in range(PERFORMANCE_DAYS, 0, -1):
                trades = rng.randint(0, 120)
                win_rate = rng.betavariate(11, 9) if trades else 0.0
                yield "%d\t%s\t%d\t%.8f\t%.4f\t%.6f\n" % (
                    strategy["id"], (today - datetime.timedelta(days=offset)).isoformat(),
                    trades, rng.gauss(150.0, 900.0) if trades else 0.0, win_rate,
                    abs(rng.gauss(0.01, 0.008)))
    return copy_rows(cursor, "strategy_performance",
                     ("strategy_id", "date", "trades", "pnl", "win_rate", "max_drawdown"),
                     batched(lines()))


def load_broker_credentials(cursor, now, rng):
    brokers = (("interactive_brokers", True, 20 * 3600), ("alpaca", True, 6 * DAY),
               ("oanda_paper", False, -3 * DAY))

    def lines():
        for name, active, expires_in in brokers:
            # Random bytes stand in for the application's ciphertext.
            ciphertext = bytes(rng.getrandbits(8) for _ in range(192))
            yield "%s\t\\\\x%s\t%s\t%s\t%s\n" % (
                name, ciphertext.hex(), format_timestamp(now + expires_in),
                "t" if active else "f", format_timestamp(now - rng.uniform(0, 5) * DAY))
    return copy_rows(cursor, "broker_credentials",
                     ("broker_name", "encrypted_credentials", "token_expires_at",
                      "is_active", "updated_at"), batched(lines()))


def load_system_alerts(cursor, count, now, rng):
    def lines():
        for _ in range(count):
            alert_type, severity, template = rng.choice(ALERT_TYPES)
            moment = now - rng.uniform(0, ALERT_DAYS) * DAY
            yield "%s\t%s\t%s\t%s\n" % (alert_type, severity,
                                         copy_escape(template % rng.randint(2, 95)),
                                         format_timestamp(moment))
    return copy_rows(cursor, "system_alerts",
                     ("type", "severity", "message", "created_at"), batched(lines()))


# ---------------------------------------------------------------------------
# Main program


def count_rows(cursor):
    counts = {}
    for table in GENERATED_TABLES:
        cursor.execute("SELECT count(*) FROM %s" % table)
        counts[table] = cursor.fetchone()[0]
    return counts


def timed(label, function, *args):
    started = time.monotonic()
    rows = function(*args)
    log.info("%s: %d rows in %.1f s", label, rows, time.monotonic() - started)
    return rows


def generate(cursor, args, now):
    """Load every generated table without committing."""
    rng = random.Random(args.seed)
    span_start = now - args.days * DAY
    instruments = build_instruments(args.instruments, rng)
    strategies = build_strategies(args.strategies, instruments, now, rng)
    timed("instruments", load_instruments, cursor, instruments, now)
    timed("strategies", load_strategies, cursor, strategies)
    timed("tick_data", load_ticks, cursor, instruments, args.ticks, args.days, now, rng)
    timed("ohlc_candles", load_candles, cursor)

    order_count = max(1000, args.ticks // 25)
    orders = build_orders(order_count, strategies, span_start, now, rng)
    timed("orders", load_orders, cursor, orders)
    timed("order_history", load_order_history, cursor, orders)
    del orders
    timed("positions", load_positions, cursor, max(100, order_count // 20),
          strategies, span_start, now, rng)
    timed("order_book_snapshots", load_order_book_snapshots, cursor,
          max(500, args.ticks // 50), instruments, now, rng)
    timed("backtest_results", load_backtest_results, cursor, strategies, now, rng)
    timed("system_logs", load_system_logs, cursor, max(2000, args.ticks // 10),
          instruments, strategies, order_count, now, rng)
    timed("strategy_performance", load_strategy_performance, cursor, strategies, now, rng)
    timed("broker_credentials", load_broker_credentials, cursor, now, rng)
    timed("system_alerts", load_system_alerts, cursor, 60, now, rng)

    # The ids above were given explicitly, so move the sequences past them.
    for table in ("instruments", "strategies", "orders"):
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), max(id)) FROM " + table,
            (table,))


def run(connection, args):
    """Load the data unless it is already there, and return the JSON report."""
    started = time.monotonic()
    with connection.cursor() as cursor:
        # Everything runs in one transaction, so a failure leaves the tables
        # as they were.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        cursor.execute("SET LOCAL TimeZone = 'UTC'")
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute("SELECT extract(epoch FROM now())::float8, "
                       "EXISTS (SELECT FROM tick_data)")
        now, has_ticks = cursor.fetchone()
        if has_ticks and not args.reset:
            counts = count_rows(cursor)
            connection.rollback()
            log.info("tick_data already has %d rows, so nothing was loaded "
                     "(run with --reset to replace the data)", counts["tick_data"])
            return {"changed": False, "rows": counts,
                    "seconds": round(time.monotonic() - started, 1)}
        if not args.reset:
            counts = count_rows(cursor)
            leftovers = sorted(table for table, rows in counts.items() if rows)
            if leftovers:
                raise RuntimeError(
                    "tick_data is empty but %s already have rows. Run again with "
                    "--reset to replace them" % ", ".join(leftovers))
        # Truncating in this transaction lets COPY FREEZE write the rows
        # already frozen, so no later vacuum has to rewrite the pages to
        # freeze them.
        cursor.execute("TRUNCATE %s RESTART IDENTITY" % ", ".join(GENERATED_TABLES))
        log.info("loading %d ticks over %d days for %d instruments and %d strategies",
                 args.ticks, args.days, args.instruments, args.strategies)
        generate(cursor, args, now)
        connection.commit()

        analyze_started = time.monotonic()
        connection.autocommit = True
        for table in GENERATED_TABLES:
            cursor.execute("ANALYZE %s" % table)
        log.info("analyzed tables in %.1f s", time.monotonic() - analyze_started)
        counts = count_rows(cursor)
    seconds = round(time.monotonic() - started, 1)
    log.info("loaded %d rows in %.1f s", sum(counts.values()), seconds)
    return {"changed": True, "rows": counts, "seconds": seconds}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        connection = psycopg2.connect(args.dsn)
    except psycopg2.OperationalError as error:
        log.error("connection failed: %s", str(error).strip())
        return 1
    try:
        report = run(connection, args)
    except (psycopg2.Error, RuntimeError) as error:
        connection.rollback()
        log.error("loading failed: %s", str(error).strip())
        return 1
    finally:
        connection.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
