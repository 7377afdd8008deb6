-- Who revoked a token (an admin token's name through the API, `hodei-server` from the
-- host), and when it was last used, to within a few seconds (each server records the tokens
-- its calls used every few seconds: hodei.server.access.keep_tokens). Tokens revoked or
-- used before this migration say nobody and never (NULL).
ALTER TABLE hodei.api_tokens
    ADD COLUMN revoked_by VARCHAR(255),
    ADD COLUMN last_used_at TIMESTAMPTZ;
