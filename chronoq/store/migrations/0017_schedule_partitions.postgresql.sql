-- Partitioned schedulers (chronoq.partitions): every schedule belongs to one of 64
-- partitions, from the two last hex digits of its id (random bits of the UUIDv7, so
-- consecutive schedules spread evenly), and only the holder of lease 'schedules:<p>'
-- fires partition p. A generated column: every insert path (API, bulk loads) fills it.
-- chronoq.partitions.partition_of computes the same value in Python.
ALTER TABLE schedules ADD COLUMN part INTEGER GENERATED ALWAYS AS ((
    16 * strpos('0123456789abcdef', substr(lower(id), length(id) - 1, 1))
    + strpos('0123456789abcdef', right(lower(id), 1))) % 64) STORED;

-- "the due schedules of these partitions, oldest slot first"; schedules_due stays for the
-- earliest due time over all of them.
CREATE INDEX schedules_part_due ON schedules (part, next_fire_at)
    WHERE paused = 0 AND next_fire_at IS NOT NULL;
