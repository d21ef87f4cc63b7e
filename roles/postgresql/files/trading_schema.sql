-- Application schema of the trading service.
--
-- Run as the application role trading_user (the table owner) in database
-- trading_db. Every statement is IF NOT EXISTS, so running the file again
-- changes nothing. It creates no roles and grants nothing: privileges are
-- managed by the role that runs it. Prices and quantities are numeric(18,8)
-- and every timestamp is timestamptz.

SET search_path TO public;

-- Tradable instruments (stocks, FX pairs, crypto) and their trading units.
CREATE TABLE IF NOT EXISTS instruments (
    id          serial PRIMARY KEY,
    symbol      text NOT NULL UNIQUE,
    exchange    text NOT NULL,
    asset_class text NOT NULL DEFAULT 'equity'
                CHECK (asset_class IN ('equity', 'fx', 'crypto', 'future')),
    currency    char(3) NOT NULL DEFAULT 'USD',
    tick_size   numeric(18,8) NOT NULL DEFAULT 0.01 CHECK (tick_size > 0),
    lot_size    numeric(18,8) NOT NULL DEFAULT 1 CHECK (lot_size > 0),
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Raw market ticks: last trade price and volume with the best bid and ask.
-- The table has no key of its own because several ticks of one instrument
-- can share a timestamp. Retention deletes rows older than 30 days.
CREATE TABLE IF NOT EXISTS tick_data (
    instrument_id integer NOT NULL REFERENCES instruments (id),
    time          timestamptz NOT NULL,
    price         numeric(18,8) NOT NULL CHECK (price > 0),
    volume        numeric(18,8) NOT NULL CHECK (volume >= 0),
    bid           numeric(18,8),
    ask           numeric(18,8),
    CHECK (bid IS NULL OR ask IS NULL OR bid <= ask)
);

CREATE INDEX IF NOT EXISTS idx_tick_data_instrument_time
    ON tick_data (instrument_id, time);
CREATE INDEX IF NOT EXISTS idx_tick_data_time
    ON tick_data (time);

-- OHLC candles aggregated from ticks, one row per instrument, timeframe and
-- bucket start time.
CREATE TABLE IF NOT EXISTS ohlc_candles (
    instrument_id integer NOT NULL REFERENCES instruments (id),
    timeframe     text NOT NULL
                  CHECK (timeframe IN ('1m', '5m', '15m', '1h', '4h', '1d')),
    time          timestamptz NOT NULL,
    open          numeric(18,8) NOT NULL,
    high          numeric(18,8) NOT NULL,
    low           numeric(18,8) NOT NULL,
    close         numeric(18,8) NOT NULL,
    volume        numeric(18,8) NOT NULL DEFAULT 0 CHECK (volume >= 0),
    CHECK (low <= open AND low <= close AND high >= open AND high >= close)
);

-- Unique, so it also serves as the natural key of a candle.
CREATE UNIQUE INDEX IF NOT EXISTS idx_ohlc_instrument_timeframe
    ON ohlc_candles (instrument_id, timeframe, time);

-- Trading strategies and their parameters.
CREATE TABLE IF NOT EXISTS strategies (
    id         serial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    config     jsonb NOT NULL DEFAULT '{}',
    is_active  boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Orders placed by strategies, with their current status.
CREATE TABLE IF NOT EXISTS orders (
    id            bigserial PRIMARY KEY,
    strategy_id   integer NOT NULL REFERENCES strategies (id),
    instrument_id integer NOT NULL REFERENCES instruments (id),
    side          text NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type    text NOT NULL
                  CHECK (order_type IN ('market', 'limit', 'stop', 'stop_limit')),
    quantity      numeric(18,8) NOT NULL CHECK (quantity > 0),
    -- NULL for market orders.
    price         numeric(18,8) CHECK (price > 0),
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'submitted', 'partially_filled',
                                    'filled', 'cancelled', 'rejected')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_orders_strategy
    ON orders (strategy_id);
CREATE INDEX IF NOT EXISTS idx_orders_instrument_created
    ON orders (instrument_id, created_at);
-- The service polls the orders that are still open at the broker.
CREATE INDEX IF NOT EXISTS idx_orders_open
    ON orders (status)
    WHERE status IN ('pending', 'submitted', 'partially_filled');

-- Positions held by strategies. Quantity is negative for a short position,
-- and closed_at is NULL while the position is open.
CREATE TABLE IF NOT EXISTS positions (
    id             bigserial PRIMARY KEY,
    strategy_id    integer NOT NULL REFERENCES strategies (id),
    instrument_id  integer NOT NULL REFERENCES instruments (id),
    quantity       numeric(18,8) NOT NULL,
    avg_price      numeric(18,8) NOT NULL CHECK (avg_price > 0),
    opened_at      timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    realized_pnl   numeric(18,8) NOT NULL DEFAULT 0,
    unrealized_pnl numeric(18,8) NOT NULL DEFAULT 0,
    CHECK (closed_at IS NULL OR closed_at >= opened_at)
);

CREATE INDEX IF NOT EXISTS idx_positions_strategy
    ON positions (strategy_id);

-- Every status change of an order, with broker details such as fills.
CREATE TABLE IF NOT EXISTS order_history (
    id         bigserial PRIMARY KEY,
    order_id   bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status     text NOT NULL
               CHECK (status IN ('pending', 'submitted', 'partially_filled',
                                 'filled', 'cancelled', 'rejected')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    details    jsonb
);

-- Also serves the foreign key, so deleting an order needs no full scan.
CREATE INDEX IF NOT EXISTS idx_order_history_order
    ON order_history (order_id, changed_at);

-- Order book depth snapshots. bids and asks are JSON arrays of
-- [price, size] levels, best level first. Retention keeps 7 days.
CREATE TABLE IF NOT EXISTS order_book_snapshots (
    id            bigserial PRIMARY KEY,
    instrument_id integer NOT NULL REFERENCES instruments (id),
    time          timestamptz NOT NULL,
    bids          jsonb NOT NULL,
    asks          jsonb NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_order_book_snapshots_instrument_time
    ON order_book_snapshots (instrument_id, time);
CREATE INDEX IF NOT EXISTS idx_order_book_snapshots_time
    ON order_book_snapshots (time);

-- Backtest runs of a strategy. total_return and max_drawdown are fractions
-- (0.12 is 12 %). Retention keeps the newest 100 runs per strategy.
CREATE TABLE IF NOT EXISTS backtest_results (
    id           bigserial PRIMARY KEY,
    strategy_id  integer NOT NULL REFERENCES strategies (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    params       jsonb NOT NULL DEFAULT '{}',
    total_return numeric(12,6),
    sharpe_ratio numeric(12,6),
    max_drawdown numeric(12,6) CHECK (max_drawdown >= 0),
    trades       integer NOT NULL DEFAULT 0 CHECK (trades >= 0)
);

CREATE INDEX IF NOT EXISTS idx_backtest_results_strategy_created
    ON backtest_results (strategy_id, created_at DESC);

-- Application log records. Retention keeps 90 days.
CREATE TABLE IF NOT EXISTS system_logs (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    level      text NOT NULL
               CHECK (level IN ('debug', 'info', 'warning', 'error', 'critical')),
    source     text NOT NULL,
    message    text NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_system_logs_created_at
    ON system_logs (created_at);

-- Daily results of each strategy. win_rate is a fraction of trades.
CREATE TABLE IF NOT EXISTS strategy_performance (
    strategy_id  integer NOT NULL REFERENCES strategies (id) ON DELETE CASCADE,
    date         date NOT NULL,
    trades       integer NOT NULL DEFAULT 0 CHECK (trades >= 0),
    pnl          numeric(18,8) NOT NULL DEFAULT 0,
    win_rate     numeric(5,4) CHECK (win_rate BETWEEN 0 AND 1),
    max_drawdown numeric(12,6) CHECK (max_drawdown >= 0),
    PRIMARY KEY (strategy_id, date)
);

-- Broker API credentials, encrypted by the application before storage.
CREATE TABLE IF NOT EXISTS broker_credentials (
    id                    serial PRIMARY KEY,
    broker_name           text NOT NULL UNIQUE,
    encrypted_credentials bytea NOT NULL,
    token_expires_at      timestamptz,
    is_active             boolean NOT NULL DEFAULT true,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Operational alerts raised by the service or by monitoring.
CREATE TABLE IF NOT EXISTS system_alerts (
    id         bigserial PRIMARY KEY,
    type       text NOT NULL,
    severity   text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_system_alerts_created_at
    ON system_alerts (created_at);
