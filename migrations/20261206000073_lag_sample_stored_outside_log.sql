-- A group's stored offset where it lies outside the log (below its start, or past its end:
-- a topic recreated, a broker wiped), kept beside the offset the sample reads it as, so
-- that a group that lost its place is shown rather than read as caught up.
alter table lag_samples add column stored_outside_log bigint;
