-- When a token last authenticated a tunnel setup, so an operator can tell a token in use from
-- one forgotten before revoking it. NULL: never used since this column exists. Written at
-- most once a minute per token (control's UPDATE is conditional on the old value), so a
-- client reconnecting in a loop does not turn every setup into a write of this row.
ALTER TABLE tokens ADD COLUMN last_used_at TIMESTAMPTZ;
