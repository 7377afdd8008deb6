-- Liveness records of workers that have ended. Until now each job left its worker's record
-- behind (its stream, closing after the worker was forgotten, wrote it again); nothing
-- reads them (only live workers are watched for silence), and the server no longer writes
-- them (hodei.liveness), so they go once.
DELETE FROM hodei.worker_liveness l
USING workers w
WHERE w.id = l.worker_id AND w.state = 'TERMINATED';
