-- A queued job held out of its line (`job hold`, Slurm's scontrol hold): by whom and why,
-- NULL once released. The queue's queries pass it by.
ALTER TABLE jobs ADD COLUMN held_by VARCHAR(255);
ALTER TABLE jobs ADD COLUMN hold_reason TEXT;
