CREATE TABLE IF NOT EXISTS `retl_state`.retl_meta (sync STRING NOT NULL, target STRING NOT NULL, name STRING NOT NULL, value STRING, PRIMARY KEY (sync, target, name))
