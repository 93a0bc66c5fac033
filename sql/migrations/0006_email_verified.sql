-- Whether a user's email address was confirmed by a sign-in provider.
--
-- Only such an address may link a new GitHub / OIDC identity to the account. An address typed
-- in at registration is nobody's word: anyone could register a victim's address first and then
-- be linked with the victim's later SSO sign-in (a pre-registration account takeover).
ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT false;

-- Accounts created by an SSO sign-in (no password) only ever stored a verified address.
UPDATE users SET email_verified = true WHERE password_hash IS NULL AND email IS NOT NULL;
