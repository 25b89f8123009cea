-- Metadata documents (tenants, API keys, reports, audit events): JSON by kind and id.
CREATE TABLE IF NOT EXISTS metadata (
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    tenant_id   TEXT,
    document    TEXT NOT NULL,  -- JSON
    updated_at  REAL NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS metadata_tenant ON metadata (kind, tenant_id);
