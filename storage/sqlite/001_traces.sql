-- Traces, spans and findings: one span per LLM request for now (ext_proc sees one call).
CREATE TABLE IF NOT EXISTS traces (
    trace_id    TEXT PRIMARY KEY,
    tenant_id   TEXT,
    agent_id    TEXT,
    created_at  REAL NOT NULL  -- unix seconds
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
    ttft_ms            REAL,
    latency_ms         REAL,
    estimated_cost_usd REAL,
    source_ip          TEXT,
    created_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_tenant_created ON spans (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS spans_decision ON spans (decision, created_at);

CREATE TABLE IF NOT EXISTS findings (
    span_id     TEXT NOT NULL REFERENCES spans (span_id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    type        TEXT NOT NULL,
    category    TEXT NOT NULL,
    severity    INTEGER NOT NULL,
    confidence  REAL NOT NULL,
    location    TEXT NOT NULL,
    rule_id     TEXT NOT NULL,
    detector    TEXT NOT NULL,
    PRIMARY KEY (span_id, idx)
);
CREATE INDEX IF NOT EXISTS findings_type ON findings (type, severity);
