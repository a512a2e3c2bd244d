-- V3: data_ingestion.market_data, range-partitioned by year, and the functions that add partitions.
--
-- Seed: "Market Data Table" (section 2) and "Time-Based Partitioning" (section 3). Where we deviate:
--
-- * data_source VARCHAR(50) NOT NULL DEFAULT 'yahoo' is added. The seed's own technical-indicator
--   section says indicators use only data_source = 'yahoo' rows and that Polygon data is stored too,
--   but its market_data table has no such column.
-- * UNIQUE (symbol, timestamp, data_source) instead of the seed's UNIQUE (symbol, timestamp): with two
--   providers the seed's key makes the second provider's bar for the same instant a duplicate-key error
--   (or silently overwrites the first under an upsert). Column order puts symbol first so this index
--   also serves every per-symbol time range query.
-- * PRIMARY KEY (id, timestamp), as in the seed's partitioning section: a primary key or unique
--   constraint on a partitioned table must include the partition key, so id alone cannot be the key.
-- * No FK to data_ingestion.symbols: ingestion may store bars before the symbol's metadata arrives, and
--   an FK check on every bar of a bulk backfill costs a lookup per row. The indicator job writes only
--   symbols that exist in data_ingestion.symbols (its tables do have the FK).
-- * open/high/low/close stay nullable as in the seed (a provider may send a bar without some prices;
--   the indicator job skips bars whose close is NULL). The CHECKs pass for NULLs, as CHECKs do.
-- * volume >= 0 and high >= low are added; the seed's valid_ohlc only implies high >= low when open and
--   close are both present.
-- * The seed's idx_market_data_symbol (symbol) is not created: the unique index's leading column is
--   symbol, so it would only duplicate it. idx_market_data_symbol_timestamp (symbol, timestamp DESC)
--   is kept as the seed defines it (latest-N-bars queries), although the unique index can serve those
--   too by a backward scan; drop it if pg_stat_user_indexes shows it unused.
-- * Partition bounds are explicit UTC instants. The seed's FOR VALUES FROM ('2024-01-01') reads the
--   literal in the session TimeZone of whoever runs the migration, so the yearly boundaries would move
--   with the operator's locale. Partitions here are calendar years in UTC.
-- * A DEFAULT partition catches any bar outside the existing yearly partitions, so an insert is never
--   refused for lack of a partition (the seed has none: a 1999 or 2031 bar would fail with
--   "no partition of relation found for row"). ensure_market_data_partition() moves such rows out when
--   the year's partition is created.
-- * The seed's create_monthly_partition(table_name, start_date) is replaced: it creates monthly
--   partitions although the table is partitioned by year, uses unqualified names (%I of the table
--   name, so it only works when market_data is on the search_path), and fails outright when the
--   partition exists or when a default partition holds rows of that range.

CREATE TABLE data_ingestion.market_data (
    id           BIGSERIAL,
    symbol       VARCHAR(20)    NOT NULL,
    "timestamp"  TIMESTAMPTZ    NOT NULL,
    open         NUMERIC(15,4),
    high         NUMERIC(15,4),
    low          NUMERIC(15,4),
    close        NUMERIC(15,4),
    volume       BIGINT,
    data_source  VARCHAR(50)    NOT NULL DEFAULT 'yahoo',
    created_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),

    CONSTRAINT market_data_pkey PRIMARY KEY (id, "timestamp"),
    CONSTRAINT market_data_symbol_timestamp_source_key UNIQUE (symbol, "timestamp", data_source),
    CONSTRAINT positive_prices CHECK (open > 0 AND high > 0 AND low > 0 AND close > 0),
    CONSTRAINT valid_ohlc CHECK (high >= GREATEST(open, close) AND low <= LEAST(open, close)),
    CONSTRAINT high_not_below_low CHECK (high >= low),
    CONSTRAINT non_negative_volume CHECK (volume >= 0)
) PARTITION BY RANGE ("timestamp");

-- Indexes on the parent are created on every partition, present and future.
CREATE INDEX idx_market_data_symbol_timestamp ON data_ingestion.market_data (symbol, "timestamp" DESC);
-- Cross-symbol time-range scans (e.g. "all bars since T" for quality checks).
CREATE INDEX idx_market_data_timestamp ON data_ingestion.market_data ("timestamp" DESC);

COMMENT ON TABLE data_ingestion.market_data IS
    'OHLCV bars, one row per (symbol, timestamp, data_source). Partitioned by UTC calendar year '
    '(market_data_yYYYY) with a DEFAULT partition (market_data_default) for years not yet created.';
COMMENT ON COLUMN data_ingestion.market_data.id IS 'Surrogate id; unique only together with timestamp (partition key).';
COMMENT ON COLUMN data_ingestion.market_data.symbol IS 'Ticker. No FK to symbols: bars may precede symbol metadata.';
COMMENT ON COLUMN data_ingestion.market_data."timestamp" IS 'Bar start time (partition key).';
COMMENT ON COLUMN data_ingestion.market_data.open IS 'Open price.';
COMMENT ON COLUMN data_ingestion.market_data.high IS 'High price.';
COMMENT ON COLUMN data_ingestion.market_data.low IS 'Low price.';
COMMENT ON COLUMN data_ingestion.market_data.close IS 'Close price (indicators read it as close::float8).';
COMMENT ON COLUMN data_ingestion.market_data.volume IS 'Traded volume, >= 0.';
COMMENT ON COLUMN data_ingestion.market_data.data_source IS 'Provider; indicators use only yahoo bars.';
COMMENT ON COLUMN data_ingestion.market_data.created_at IS 'Row creation time.';

CREATE TABLE data_ingestion.market_data_default
    PARTITION OF data_ingestion.market_data DEFAULT;

COMMENT ON TABLE data_ingestion.market_data_default IS
    'Catch-all partition for bars of years without a yearly partition. Should be empty in steady state; '
    'run data_ingestion.ensure_market_data_partition(year) for any year found here.';


-- ensure_market_data_partition(year): create data_ingestion.market_data_yYYYY for the UTC calendar year
-- if it does not exist. Returns true if it created the partition, false if it already existed.
--
-- Why the row move: CREATE TABLE ... PARTITION OF fails ("updated partition constraint for default
-- partition would be violated by some row") when the DEFAULT partition already holds rows of the new
-- range. So, in the caller's transaction: copy those rows to a temporary table, delete them from the
-- default partition, create the partition, and re-insert them through the parent, which routes them to
-- the new partition. ids and created_at are preserved. If anything fails, the transaction rolls back
-- and nothing has moved.
--
-- Locking: the fast path (partition exists) takes no lock. Otherwise it takes ACCESS EXCLUSIVE on the
-- parent (which CREATE TABLE ... PARTITION OF needs anyway) and on the default partition before looking
-- for rows to move, so no concurrent insert can land a row of that year in the default partition
-- between the move and the CREATE; it then re-checks, so concurrent callers for the same year are safe
-- (the second sees the partition and returns false). Readers of market_data wait while it runs; the
-- move path is rare (only years that received bars before their partition existed).
--
-- SECURITY DEFINER so the daemon's least-privilege role (V17) can run partition maintenance without
-- owning market_data; it runs with the privileges of the migration owner. search_path is pinned to
-- pg_catalog, data_ingestion and, explicitly last, pg_temp: when pg_temp is not listed PostgreSQL
-- searches it FIRST for relations, which would let a caller shadow a relation name with a temp table
-- ("Writing SECURITY DEFINER Functions Safely" in the PostgreSQL manual). All names below are
-- qualified anyway. EXECUTE is revoked from PUBLIC below and granted to trading_sync in V17.
--
-- Callers on a live system should SET LOCAL lock_timeout first (and retry later on SQLSTATE 55P03): a
-- queued ACCESS EXCLUSIVE request makes every new reader of market_data wait behind it.
--
-- A range that overlaps a partition created by hand under another name (say monthly partitions)
-- makes CREATE fail with SQLSTATE 42P17; that is an operator decision, not something to paper over.
CREATE FUNCTION data_ingestion.ensure_market_data_partition(p_year integer)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, data_ingestion, pg_temp
AS $fn$
DECLARE
    v_year_txt  text;
    v_part      text;
    v_from      text;
    v_to        text;
    v_rel       regclass;
    v_default   oid;
    v_default_q text;
    v_moved     bigint := 0;
BEGIN
    IF p_year IS NULL OR p_year < 1 OR p_year > 9998 THEN
        RAISE EXCEPTION 'ensure_market_data_partition: year % is outside 1..9998', p_year
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_year_txt := lpad(p_year::text, 4, '0');
    v_part     := 'market_data_y' || v_year_txt;
    -- ISO 8601 with an explicit offset: parsed the same whatever the session's DateStyle / TimeZone.
    v_from     := v_year_txt || '-01-01 00:00:00+00';
    v_to       := lpad((p_year + 1)::text, 4, '0') || '-01-01 00:00:00+00';

    -- Fast path, no lock: the partition already exists.
    v_rel := to_regclass('data_ingestion.' || quote_ident(v_part));
    IF v_rel IS NOT NULL THEN
        PERFORM data_ingestion.assert_market_data_partition(v_rel);
        RETURN false;
    END IF;

    LOCK TABLE ONLY data_ingestion.market_data IN ACCESS EXCLUSIVE MODE;

    -- Re-check under the lock: a concurrent caller may have created it while we waited.
    v_rel := to_regclass('data_ingestion.' || quote_ident(v_part));
    IF v_rel IS NOT NULL THEN
        PERFORM data_ingestion.assert_market_data_partition(v_rel);
        RETURN false;
    END IF;

    -- The default partition, found from the catalog rather than by name, in case an operator
    -- re-created it under another name.
    SELECT pt.partdefid INTO v_default
      FROM pg_catalog.pg_partitioned_table pt
     WHERE pt.partrelid = 'data_ingestion.market_data'::regclass;

    IF v_default IS NOT NULL AND v_default <> 0 THEN
        SELECT format('%I.%I', n.nspname, c.relname) INTO v_default_q
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = v_default;

        EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', v_default_q);

        -- Copy out and delete in one statement. Deleting through the parent: with no partition for
        -- the year yet, partition pruning sends the DELETE to the default partition only.
        CREATE TEMPORARY TABLE market_data_partition_move
            (LIKE data_ingestion.market_data) ON COMMIT DROP;

        WITH moved AS (
            DELETE FROM data_ingestion.market_data
             WHERE "timestamp" >= v_from::timestamptz
               AND "timestamp" <  v_to::timestamptz
            RETURNING *
        )
        INSERT INTO pg_temp.market_data_partition_move SELECT * FROM moved;
        GET DIAGNOSTICS v_moved = ROW_COUNT;
    END IF;

    EXECUTE format(
        'CREATE TABLE data_ingestion.%I PARTITION OF data_ingestion.market_data FOR VALUES FROM (%L) TO (%L)',
        v_part, v_from, v_to);
    EXECUTE format(
        'COMMENT ON TABLE data_ingestion.%I IS %L',
        v_part, 'market_data bars of UTC calendar year ' || v_year_txt
                || ' (created by data_ingestion.ensure_market_data_partition)');

    IF v_default IS NOT NULL AND v_default <> 0 THEN
        IF v_moved > 0 THEN
            -- Re-insert through the parent: tuple routing now sends the rows to the new partition.
            INSERT INTO data_ingestion.market_data SELECT * FROM pg_temp.market_data_partition_move;
            RAISE NOTICE 'ensure_market_data_partition: moved % row(s) of % from the default partition into %',
                v_moved, v_year_txt, v_part;
        END IF;
        -- Dropped now, not only at commit, so a second call in the same transaction can create it again.
        DROP TABLE pg_temp.market_data_partition_move;
    END IF;

    RETURN true;
END;
$fn$;

-- Helper of the above: a relation with the partition's name that is not a partition of market_data is
-- an operator error to report, not a partition to trust.
CREATE FUNCTION data_ingestion.assert_market_data_partition(p_rel regclass)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, data_ingestion, pg_temp
AS $fn$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_inherits i
         WHERE i.inhrelid = p_rel
           AND i.inhparent = 'data_ingestion.market_data'::regclass
    ) THEN
        RAISE EXCEPTION '% exists but is not a partition of data_ingestion.market_data', p_rel
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END;
$fn$;

-- ensure_market_data_partitions(from_year, to_year): ensure_market_data_partition for each year of the
-- inclusive range. Returns how many partitions it created. The span is capped at 200 years to catch a
-- swapped or mistyped argument before it creates thousands of tables.
CREATE FUNCTION data_ingestion.ensure_market_data_partitions(p_from_year integer, p_to_year integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, data_ingestion, pg_temp
AS $fn$
DECLARE
    v_created integer := 0;
    v_year    integer;
BEGIN
    IF p_from_year IS NULL OR p_to_year IS NULL OR p_from_year > p_to_year THEN
        RAISE EXCEPTION 'ensure_market_data_partitions: invalid year range % .. %', p_from_year, p_to_year
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_to_year - p_from_year >= 200 THEN
        RAISE EXCEPTION 'ensure_market_data_partitions: range % .. % spans more than 200 years', p_from_year, p_to_year
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR v_year IN p_from_year .. p_to_year LOOP
        IF data_ingestion.ensure_market_data_partition(v_year) THEN
            v_created := v_created + 1;
        END IF;
    END LOOP;
    RETURN v_created;
END;
$fn$;

COMMENT ON FUNCTION data_ingestion.ensure_market_data_partition(integer) IS
    'Creates partition data_ingestion.market_data_yYYYY (UTC year) if missing, moving that year''s rows out '
    'of the default partition first. Returns true if created. SECURITY DEFINER; EXECUTE granted to trading_sync.';
COMMENT ON FUNCTION data_ingestion.ensure_market_data_partitions(integer, integer) IS
    'ensure_market_data_partition for every year in [from_year, to_year] (at most 200 years). Returns the number created.';
COMMENT ON FUNCTION data_ingestion.assert_market_data_partition(regclass) IS
    'Raises unless the relation is a partition of data_ingestion.market_data. Internal helper.';

-- Functions are executable by PUBLIC by default; a SECURITY DEFINER one that creates tables must not be.
REVOKE ALL ON FUNCTION data_ingestion.ensure_market_data_partition(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION data_ingestion.ensure_market_data_partitions(integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION data_ingestion.assert_market_data_partition(regclass) FROM PUBLIC;

-- Yearly partitions from 2000 (the start of the history we backfill) to next year. Later years are
-- added by the daemon's maintenance (ensure_market_data_partitions(this_year, this_year + 1)); until
-- then their bars land in the default partition, and are moved when the partition is created.
-- Note that this makes the migration's result depend on the date it runs; that is intended.
SELECT data_ingestion.ensure_market_data_partitions(
    2000, (extract(year FROM now() AT TIME ZONE 'UTC'))::integer + 1);
