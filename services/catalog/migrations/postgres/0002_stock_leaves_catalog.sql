-- Stock is the inventory service's (ARCHITECTURE.md §4): the catalog keeps what a product is
-- and what it costs, not how many are on hand.
ALTER TABLE products DROP COLUMN stock;
