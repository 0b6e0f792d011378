-- Two-way SMS: our dedicated numbers, inbound messages, and opt-outs scoped to one number.

-- One of our numbers (E.164) and how it answers keywords. opt_out_scope: 'all' = STOP blocks
-- every number of ours, 'number' = this number only.
CREATE TABLE numbers (
    number          text PRIMARY KEY,
    help_text       text NOT NULL,
    stop_text       text NOT NULL,
    start_text      text NOT NULL,
    keywords        jsonb NOT NULL DEFAULT '{}',
    forward         boolean NOT NULL DEFAULT true,
    opt_out_scope   text NOT NULL DEFAULT 'all' CHECK (opt_out_scope IN ('number', 'all')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- scope '' = every number of ours (and every other channel's only scope); otherwise one of our
-- numbers, for an SMS opt-out made by STOP on a number whose opt_out_scope is 'number'. Every
-- existing row becomes scope ''.
ALTER TABLE opt_outs ADD COLUMN scope text NOT NULL DEFAULT '';
ALTER TABLE opt_outs DROP CONSTRAINT opt_outs_pkey;
ALTER TABLE opt_outs ADD PRIMARY KEY (channel, address, scope);

-- Every inbound message, once per provider message id: a retried webhook finds its row and is
-- answered with the same reply, sending and publishing nothing again. reply is the auto-reply
-- we gave (NULL: none), which is also what the hourly reply limit counts.
CREATE TABLE inbound_messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider            text NOT NULL,
    provider_message_id text NOT NULL,
    sender              text NOT NULL,
    number              text NOT NULL,
    body                text NOT NULL,
    action              text NOT NULL,
    keyword             text,
    reply               text,
    last_message_id     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_message_id)
);
CREATE INDEX inbound_messages_replies_idx ON inbound_messages (number, sender, created_at)
    WHERE reply IS NOT NULL;

-- "Our last message to this sender": the newest SMS message to a recipient.
CREATE INDEX messages_sms_recipient_idx ON messages (recipient, created_at DESC)
    WHERE channel = 'sms';
