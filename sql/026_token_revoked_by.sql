-- Who revoked a token: an admin token's name through the API, `hodei-server` from the
-- host. Tokens revoked before this migration say nobody (NULL).
ALTER TABLE hodei.api_tokens ADD COLUMN revoked_by VARCHAR(255);
