"""The list index of instance records on Valkey: a page, a filter and a count without reading every record.

Keys (all under `ngpu:instances`), written by `InstanceStore` in the same transaction as the record they describe:
- `ngpu:instances`                    sorted set of every member by creation time (the unfiltered list).
- `ngpu:instances:state:<state>`      one sorted set per state, same scores: a status filter is one set, its count
                                      a ZCARD, its page a ZREVRANGE.
- `ngpu:instances:team:<team>`        the same per owning team (and `...:team:<team>:state:<state>` per team and
                                      state), so a team's page reads only its own members. Unowned records (team
                                      null) and instances made outside this service are in no team set: admins
                                      only, who page the sets above.
- `ngpu:instances:teams`              hash member -> its team, so that dropping a member finds its team sets.
- `ngpu:instances:names`              hash member -> case-folded name. The name filter is a case-insensitive
                                      substring, which no sorted structure answers; the page script walks the
                                      (state) set and this hash inside Valkey, so only the page's ids and the count
                                      come back and no record is read for the filter.
- `ngpu:instances:synced-at`          hash member -> when the background sync last saw the instance on Novita
                                      (the start of that sync's listing, so a value never claims fresher data).
- `ngpu:instances:expiring`           sorted set member -> when a deleted record expires; the sync prunes the index
                                      entries of expired records.
- `ngpu:instances:sync`               hash: progress of the background sync (state, times, counts).
- `ngpu:instances:sync-wanted`        set by a job waiting for news of its instance: the sync runs before its period ends.
- `ngpu:instances:version`            a counter bumped by every write that adds a member or moves one between sets.
- `ngpu:instances:match:<version>:<set>:<needle>`  the members of `<set>` whose name contains `<needle>`, with
                                      their scores, kept `MATCH_TTL_SECONDS`: a repeated name filter pages this
                                      small set instead of walking the names again, until the next write (new version).
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
from typing import Literal

PREFIX = "ngpu:instances"
ALL_KEY = PREFIX
NAMES_KEY = f"{PREFIX}:names"
SYNCED_AT_KEY = f"{PREFIX}:synced-at"
EXPIRING_KEY = f"{PREFIX}:expiring"
EXTERNALS_KEY = f"{PREFIX}:externals"
TEAMS_KEY = f"{PREFIX}:teams"
VERSION_KEY = f"{PREFIX}:index-version"
SYNC_STATUS_KEY = f"{PREFIX}:sync"
SYNC_WANTED_KEY = f"{PREFIX}:sync-wanted"
VERSION_COUNTER_KEY = f"{PREFIX}:version"
MATCH_KEY_PREFIX = f"{PREFIX}:match:"
MATCH_TTL_SECONDS = 30
BUILD_LEASE_KEY = f"{PREFIX}:index-build-lease"
INDEX_VERSION = "1"
EXTERNAL_MEMBER_PREFIX = "ext:"


# The orders a page can come in: by creation time (newest first, the sets' own order), or by name (sorted in Valkey).
ListOrder = Literal["newest", "name"]


def state_key(state: str) -> str:
    """The sorted set of one state's members."""
    return f"{PREFIX}:state:{state}"


def team_key(team: str, state: str | None = None) -> str:
    """The sorted set of one team's members (of one state, when given)."""
    return f"{PREFIX}:team:{team}" + (f":state:{state}" if state is not None else "")


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


# KEYS[1] the sorted set to page, KEYS[2] the names hash, KEYS[3] the version counter.
# ARGV: needle ('' = no name filter), offset, count, cursor score ('' = no cursor), cursor member, match key prefix,
# match TTL, order ('newest', or 'name': by case-folded name, offset paging only). Returns {total, member, score,
# member, score, ...} for the page (scores as strings), in that order.
# A name filter first materialises the matching members (a walk of the set and the names hash inside Valkey, names
# only, never records) into a match set for the current version, unless it exists; then every query is a ZCARD and a
# range read of one sorted set.
PAGE_SCRIPT = """
local set_key = KEYS[1]
local needle, offset, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local has_cursor = ARGV[4] ~= ''
local cursor_score, cursor_member = tonumber(ARGV[4]), ARGV[5]
if needle ~= '' then
  local version = redis.call('GET', KEYS[3]) or '0'
  local match_key = ARGV[6] .. version .. ':' .. KEYS[1] .. ':' .. needle
  local done_key = match_key .. ':built'
  if redis.call('EXISTS', done_key) == 0 then
    local found = {}
    if 2 * redis.call('ZCARD', KEYS[1]) < redis.call('HLEN', KEYS[2]) then
      -- A small set (a team's, a rare state): look up its members' names.
      local start, chunk = 0, 1000
      while true do
        local batch = redis.call('ZRANGE', KEYS[1], start, start + chunk - 1, 'WITHSCORES')
        if #batch == 0 then break end
        local members = {}
        for i = 1, #batch, 2 do members[#members + 1] = batch[i] end
        local names = redis.call('HMGET', KEYS[2], unpack(members))
        for j = 1, #members do
          local name = names[j]
          if name and string.find(name, needle, 1, true) then
            found[#found + 1] = batch[2 * j]; found[#found + 1] = members[j]
          end
        end
        start = start + chunk
      end
    else
      -- Most of the fleet: walk every name once, then ask the set for the few that match (3x faster at 10,000).
      local names = redis.call('HGETALL', KEYS[2])
      for i = 1, #names, 2 do
        if string.find(names[i + 1], needle, 1, true) then
          local score = redis.call('ZSCORE', KEYS[1], names[i])
          if score then found[#found + 1] = score; found[#found + 1] = names[i] end
        end
      end
    end
    for first = 1, #found, 1000 do
      redis.call('ZADD', match_key, unpack(found, first, math.min(first + 999, #found)))
    end
    redis.call('EXPIRE', match_key, ARGV[7])
    redis.call('SET', done_key, '1', 'EX', ARGV[7])
  end
  set_key = match_key
end
local out = {redis.call('ZCARD', set_key)}
if ARGV[8] == 'name' then
  -- Name order: sort the (filtered) set by the names hash inside Valkey, newest first among equal names; only the
  -- page's members come back, so no record is read for the order either.
  local all = redis.call('ZRANGE', set_key, 0, -1, 'WITHSCORES')
  local entries = {}
  for i = 1, #all, 2 do entries[#entries + 1] = {member = all[i], score = tonumber(all[i + 1]), raw = all[i + 1]} end
  for first = 1, #entries, 1000 do
    local members = {}
    for j = first, math.min(first + 999, #entries) do members[#members + 1] = entries[j].member end
    local names = redis.call('HMGET', KEYS[2], unpack(members))
    for j = 1, #members do entries[first + j - 1].name = names[j] or '' end
  end
  table.sort(entries, function(a, b)
    if a.name ~= b.name then return a.name < b.name end
    if a.score ~= b.score then return a.score > b.score end
    return a.member > b.member
  end)
  for i = offset + 1, math.min(offset + count, #entries) do
    out[#out + 1] = entries[i].member; out[#out + 1] = entries[i].raw
  end
  return out
end
if not has_cursor then
  local page = redis.call('ZREVRANGE', set_key, offset, offset + count - 1, 'WITHSCORES')
  for _, value in ipairs(page) do out[#out + 1] = value end
  return out
end
local skip, taken = 0, 0
while taken < count do
  local batch = redis.call('ZREVRANGEBYSCORE', set_key, ARGV[4], '-inf', 'WITHSCORES', 'LIMIT', skip, count + 16)
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    local score = tonumber(batch[i + 1])
    if taken < count and (score < cursor_score or (score == cursor_score and batch[i] < cursor_member)) then
      out[#out + 1] = batch[i]; out[#out + 1] = batch[i + 1]; taken = taken + 1
    end
  end
  skip = skip + #batch / 2
end
return out
"""
