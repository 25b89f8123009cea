-- Indexes for the admin API's queries.
-- SQLite does not index a foreign key's referencing side: without spans_trace, reading a trace
-- by id scans spans, and so does every cascade from a purged trace (PostgreSQL has it since
-- 001_traces.sql).
CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
-- Listings and stats across tenants (no tenant to lead with), newest first.
CREATE INDEX IF NOT EXISTS spans_created ON spans (created_at);
-- A span's findings of one type: without it SQLite's planner answers the finding-type filter
-- (EXISTS ... e.span_id = s.span_id AND e.type = ?) from findings_type, walking every finding
-- of that type for each span in range.
CREATE INDEX IF NOT EXISTS findings_span_type ON findings (span_id, type);
