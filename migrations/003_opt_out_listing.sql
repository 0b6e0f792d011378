-- GET /v1/opt-outs pages through opt-outs in (created_at, channel, address) order with a keyset
-- cursor: one index for the whole list, one for a single channel's list.
CREATE INDEX opt_outs_listing_idx ON opt_outs (created_at, channel, address);
CREATE INDEX opt_outs_channel_listing_idx ON opt_outs (channel, created_at, address);
