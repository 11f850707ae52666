-- Templates (README, "Templates and the 24-hour window"): a message carries
-- free-form text (`body`) or an approved WhatsApp template (`template`, the
-- client's object as kurir validated it: name, language, and parameters or
-- components), never both. One JSON column rather than a table per kind:
-- a template is read and written whole, with its message.
ALTER TABLE messages ALTER COLUMN body DROP NOT NULL;
ALTER TABLE messages ADD COLUMN template jsonb;
-- Every existing row has a body; NOT VALID skips checking them (a scan of
-- the whole table under a lock), the constraint holds for every new row.
ALTER TABLE messages ADD CONSTRAINT messages_content_check
    CHECK ((body IS NULL) <> (template IS NULL)) NOT VALID;

-- WhatsApp's 24-hour window, per user: when did the user last write to a
-- business number (whatsapp_contacts, recorded by the receipts webhook)?
-- A user is known by phone number, so the lookup is by wa_id (the number's
-- digits), across the numbers kurir sends from.
CREATE INDEX whatsapp_contacts_wa_id_idx ON whatsapp_contacts (wa_id, last_inbound_at);
