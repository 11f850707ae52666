-- Receipts from WhatsApp (README, "Receipts"): Meta's status notifications
-- move a message sent → delivered → read, or to failed, and an incoming
-- message from a user opens WhatsApp's 24-hour window.
--
-- The phone number id a message goes out from, set when a worker claims it
-- (the whatsapp provider's KURIR_WHATSAPP_PHONE_NUMBER_ID). A receipt only
-- ever touches messages sent from the number its `metadata.phone_number_id`
-- names, so a receipt for one sender can never change another sender's
-- messages. NULL: not sent through WhatsApp (the log or webhook provider),
-- or claimed before this column existed.
ALTER TABLE messages ADD COLUMN sender_id text;

-- Receipts name a message by kurir's id (`biz_opaque_callback_data`, the
-- primary key) or by WhatsApp's (`wamid`), which needs this index. Partial:
-- rows not sent through WhatsApp have no wamid. The pipeline's updates
-- change `state`, which partial indexes depend on, so they were never HOT:
-- this adds one index entry to updates of rows that have a wamid, nothing
-- to those that have none. (On a large existing table, build it first with
-- CREATE INDEX CONCURRENTLY under this name, then migrate.)
CREATE INDEX IF NOT EXISTS messages_wamid_idx ON messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- What kurir knows of the WhatsApp users who wrote to a business number:
-- when they last did (it opens the 24-hour window in which free-form text
-- may be sent), by the number they wrote to and their WhatsApp id (the
-- phone number's digits, `wa_id`), with their business-scoped user id when
-- Meta sent one. One row per user and business number, updated in place.
CREATE TABLE whatsapp_contacts (
    phone_number_id  text NOT NULL,
    wa_id            text NOT NULL,
    user_id          text,
    last_inbound_at  timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT whatsapp_contacts_pkey PRIMARY KEY (phone_number_id, wa_id)
);
-- an incoming message from a user who shares no phone number carries only
-- the business-scoped id
CREATE INDEX whatsapp_contacts_user_idx ON whatsapp_contacts (phone_number_id, user_id)
    WHERE user_id IS NOT NULL;
