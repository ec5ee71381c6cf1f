-- Leadership leases: one row per role ("scheduler"). The holder renews expires_at; another
-- process may take an expired lease, which bumps the fencing token. Writes made on behalf
-- of a lease check the token in their own transaction, so a stale leader's are refused.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    token      BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
