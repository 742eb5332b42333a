-- Deactivated users (docs/tokens.md): a departed colleague's account. Deactivation revokes every
-- token, withdraws unused invites and ends memberships in one transaction; while `disabled_at`
-- is set no token, invite or proxy sign-in is made for the user. Their adapters stay.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
