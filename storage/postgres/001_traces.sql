-- Traces, spans and findings, as in storage/sqlite/001_traces.sql: timestamps stay unix
-- seconds (DOUBLE PRECISION) so both backends hand back the same SpanRecord values.
CREATE TABLE IF NOT EXISTS traces (
    trace_id    TEXT PRIMARY KEY,
    tenant_id   TEXT,
    agent_id    TEXT,
    created_at  DOUBLE PRECISION NOT NULL  -- unix seconds
);
CREATE INDEX IF NOT EXISTS traces_tenant_created ON traces (tenant_id, created_at);

CREATE TABLE IF NOT EXISTS spans (
    span_id            TEXT PRIMARY KEY,
    trace_id           TEXT NOT NULL REFERENCES traces (trace_id) ON DELETE CASCADE,
    tenant_id          TEXT,
    model_name         TEXT,
    operation_name     TEXT NOT NULL,
    dialect            TEXT,
    prompt             TEXT,
    response           TEXT,
    status_code        INTEGER,
    security_score     INTEGER NOT NULL,
    decision           TEXT NOT NULL,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    usage_source       TEXT,
    ttft_ms            DOUBLE PRECISION,
    latency_ms         DOUBLE PRECISION,
    estimated_cost_usd DOUBLE PRECISION,
    source_ip          TEXT,
    created_at         DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_tenant_created ON spans (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS spans_decision ON spans (decision, created_at);
-- Unlike SQLite, PostgreSQL does not index a foreign key's referencing side: trace_id
-- lookups and the cascade from traces would otherwise scan spans.
CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
-- The unfiltered listing (newest first) has no tenant to lead with.
CREATE INDEX IF NOT EXISTS spans_created ON spans (created_at);

CREATE TABLE IF NOT EXISTS findings (
    span_id     TEXT NOT NULL REFERENCES spans (span_id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    type        TEXT NOT NULL,
    category    TEXT NOT NULL,
    severity    INTEGER NOT NULL,
    confidence  DOUBLE PRECISION NOT NULL,
    location    TEXT NOT NULL,
    rule_id     TEXT NOT NULL,
    detector    TEXT NOT NULL,
    PRIMARY KEY (span_id, idx)
);
CREATE INDEX IF NOT EXISTS findings_type ON findings (type, severity);
