-- A refund saga stored before refunds put the stock back planned the refund alone: add the
-- restock after it, so that cancelling a confirmed order gives its stock back whenever the
-- saga was started.
UPDATE orders SET plan = 'refund,restock'
WHERE status = 'REFUNDING' AND step = 'cancel-shipment' AND plan = 'refund';
UPDATE orders SET plan = 'restock'
WHERE status = 'REFUNDING' AND step = 'refund' AND plan = '';
