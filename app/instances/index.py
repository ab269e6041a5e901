"""The list index of instance records on Valkey: a page, a filter and a count without reading every record.

Keys (all under `ngpu:instances`), written by `InstanceStore` in the same transaction as the record they describe:
- `ngpu:instances`                    sorted set of every member by creation time (the unfiltered list).
- `ngpu:instances:state:<state>`      one sorted set per state, same scores: a status filter is one set, its count
                                      a ZCARD, its page a ZREVRANGE. A team filter (issue 10) would be one more set
                                      per team, paged the same way (intersected with a state set when both are given).
- `ngpu:instances:names`              hash member -> case-folded name. The name filter is a case-insensitive
                                      substring, which no sorted structure answers; the page script walks the
                                      (state) set and this hash inside Valkey, so only the page's ids and the count
                                      come back and no record is read for the filter.
- `ngpu:instances:synced-at`          hash member -> when the background sync last saw the instance on Novita
                                      (the start of that sync's listing, so a value never claims fresher data).
- `ngpu:instances:expiring`           sorted set member -> when a deleted record expires; the sync prunes the index
                                      entries of expired records.
- `ngpu:instances:sync`               hash: progress of the background sync (state, times, counts).
- `ngpu:instances:index-version`      set once the index was built from the records (migration of deployments
                                      whose records predate it).
Members are record ids (16 hex characters), or `ext:<novita id>` for an instance on the account that this service did
not create (the sync keeps its view in `ngpu:instance-external:<novita id>`).

Pages are newest first. `page`/`pageSize` is offset paging; a cursor (the last item's creation time and id) pages
stably: items created or changed while a client walks the pages never shift the rest of the walk.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

PREFIX = "ngpu:instances"
ALL_KEY = PREFIX
NAMES_KEY = f"{PREFIX}:names"
SYNCED_AT_KEY = f"{PREFIX}:synced-at"
EXPIRING_KEY = f"{PREFIX}:expiring"
EXTERNALS_KEY = f"{PREFIX}:externals"
VERSION_KEY = f"{PREFIX}:index-version"
SYNC_STATUS_KEY = f"{PREFIX}:sync"
BUILD_LEASE_KEY = f"{PREFIX}:index-build-lease"
INDEX_VERSION = "1"
EXTERNAL_MEMBER_PREFIX = "ext:"


def state_key(state: str) -> str:
    """The sorted set of one state's members."""
    return f"{PREFIX}:state:{state}"


def external_member(novita_id: str) -> str:
    """The index member of an instance this service did not create."""
    return EXTERNAL_MEMBER_PREFIX + novita_id


def external_key(novita_id: str) -> str:
    """Where the sync keeps the view of an instance this service did not create."""
    return f"ngpu:instance-external:{novita_id}"


def is_external(member: str) -> bool:
    """Whether an index member is an instance made outside this service."""
    return member.startswith(EXTERNAL_MEMBER_PREFIX)


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: its last item's creation time (the sort score) and member."""

    score: float
    member: str

    def encode(self) -> str:
        """Opaque to clients: URL-safe base64 of `[score, member]`."""
        return base64.urlsafe_b64encode(json.dumps([self.score, self.member]).encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse a cursor this API returned; `ValueError` for anything else."""
        try:
            score, member = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, TypeError, binascii.Error):
            raise ValueError("not a cursor returned by this API") from None
        if not isinstance(score, (int, float)) or not isinstance(member, str) or not member:
            raise ValueError("not a cursor returned by this API")
        return cls(float(score), member)


# KEYS[1] the sorted set to page, KEYS[2] the names hash.
# ARGV: needle ('' = no name filter), offset, count, cursor score ('' = no cursor), cursor member.
# Returns {total, member, score, member, score, ...} for the page (scores as strings), newest first.
# Without a name filter the count is a ZCARD and the page one range read; with one, the set is walked in chunks
# inside Valkey (names only, never records).
PAGE_SCRIPT = """
local needle, offset, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local has_cursor = ARGV[4] ~= ''
local cursor_score, cursor_member = tonumber(ARGV[4]), ARGV[5]
local out = {0}
local function past_cursor(member, score)
  return (not has_cursor) or score < cursor_score or (score == cursor_score and member < cursor_member)
end
if needle == '' then
  out[1] = redis.call('ZCARD', KEYS[1])
  if not has_cursor then
    local page = redis.call('ZREVRANGE', KEYS[1], offset, offset + count - 1, 'WITHSCORES')
    for _, value in ipairs(page) do out[#out + 1] = value end
    return out
  end
  local skip, taken = 0, 0
  while taken < count do
    local batch = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[4], '-inf', 'WITHSCORES', 'LIMIT', skip, count + 16)
    if #batch == 0 then break end
    for i = 1, #batch, 2 do
      if taken < count and past_cursor(batch[i], tonumber(batch[i + 1])) then
        out[#out + 1] = batch[i]; out[#out + 1] = batch[i + 1]; taken = taken + 1
      end
    end
    skip = skip + #batch / 2
  end
  return out
end
local total, skipped, taken, start, chunk = 0, 0, 0, 0, 1000
while true do
  local batch = redis.call('ZREVRANGE', KEYS[1], start, start + chunk - 1, 'WITHSCORES')
  if #batch == 0 then break end
  local members = {}
  for i = 1, #batch, 2 do members[#members + 1] = batch[i] end
  local names = redis.call('HMGET', KEYS[2], unpack(members))
  for j, member in ipairs(members) do
    local name = names[j]
    if name and string.find(name, needle, 1, true) then
      total = total + 1
      local score = batch[2 * j]
      if past_cursor(member, tonumber(score)) then
        if skipped < offset then
          skipped = skipped + 1
        elseif taken < count then
          out[#out + 1] = member; out[#out + 1] = score; taken = taken + 1
        end
      end
    end
  end
  start = start + chunk
end
out[1] = total
return out
"""
