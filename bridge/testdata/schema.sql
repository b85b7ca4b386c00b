-- vclq bridge: the minimal subset of Apache VCL 2.5.1's schema that the bridge reads
-- and writes, with VCL's table and column names and types, written for vclq's unit
-- tests. The state ids and computerloadstate names are VCL's (docs/VCL_REFERENCE.md
-- §2, §3); the bridge resolves both by name at start-up. The bridge's own tables
-- (vclq_outbox, vclq_applied) are created by the bridge itself (bridge.EnsureTables).

CREATE TABLE `state` (
  `id` tinyint(3) unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(20) NOT NULL DEFAULT '',
  PRIMARY KEY (`id`),
  UNIQUE KEY `name` (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

INSERT INTO `state` (`id`, `name`) VALUES
(1,'deleted'),(2,'available'),(3,'reserved'),(4,'classreserved'),(5,'failed'),
(6,'reloading'),(7,'imageinuse'),(8,'inuse'),(9,'cleaning'),(10,'maintenance'),
(11,'timeout'),(12,'complete'),(13,'new'),(14,'pending'),(15,'imageprep'),(16,'image'),
(17,'makeproduction'),(18,'tomaintenance'),(19,'reload'),(20,'vmhostinuse'),
(21,'tovmhostinuse'),(24,'checkpoint'),(26,'rebootsoft'),(27,'reinstall'),
(28,'reboothard'),(29,'servermodified');

CREATE TABLE `computerloadstate` (
  `id` smallint(8) unsigned NOT NULL AUTO_INCREMENT,
  `loadstatename` varchar(24) NOT NULL,
  `prettyname` varchar(50) DEFAULT NULL,
  `est` tinyint(2) unsigned DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `loadstatename` (`loadstatename`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

-- Deliberately in another order than upstream: ids differ between sites, names do not.
INSERT INTO `computerloadstate` (`loadstatename`, `prettyname`, `est`) VALUES
('begin','beginning to process reservation',0),
('statuscheck','computer status check',10),
('loadimageblade','must reload computer',0),
('info','info',2),
('doesimageexists','confirming image exists locally',4),
('copyfrompartnerMN','copy image from partner management node',0),
('startload','starting load process',6),
('transfervm','transferring image files to host server',255),
('vmsetupconfig','creating configuration file',2),
('startvm','starting virtual machine',3),
('machinebooted','machine booting',68),
('dynamicDHCPaddress','detecting dynamic IP address',2),
('staticIPaddress','setting static IP address',2),
('loadimagecomplete','running post configuration',0),
('addinguser','adding user account',18),
('nodeready','resource ready',0),
('exited','vcld process exited',0),
('reserved','ready for Connect',0),
('acknowledgetimeout','start acknowledge timeout',0),
('noinitialconnection','initial user connection not detected',0),
('postreserve','post reserve completed',0),
('connected','detected user connection',2),
('failed','reservation failed',2),
('loadimagefailed','preparing computer failed',2),
('timeout','timeout',2),
('deleted','deleted',NULL),
('WARNING','WARNING',2);

CREATE TABLE `computerloadlog` (
  `id` int(10) unsigned NOT NULL AUTO_INCREMENT,
  `reservationid` mediumint(8) unsigned NOT NULL,
  `computerid` smallint(8) unsigned NOT NULL,
  `loadstateid` smallint(8) unsigned NOT NULL,
  `timestamp` datetime DEFAULT NULL,
  `additionalinfo` text,
  PRIMARY KEY (`id`),
  KEY `reservationid` (`reservationid`),
  KEY `loadstateid` (`loadstateid`),
  KEY `computerid` (`computerid`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `managementnode` (
  `id` smallint(5) unsigned NOT NULL AUTO_INCREMENT,
  `IPaddress` varchar(15) NOT NULL DEFAULT '',
  `hostname` varchar(50) NOT NULL DEFAULT '',
  `ownerid` mediumint(8) unsigned NOT NULL DEFAULT '1',
  `stateid` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `lastcheckin` timestamp NULL DEFAULT NULL,
  `checkininterval` tinyint(3) unsigned NOT NULL DEFAULT '12',
  `availablenetworks` text NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `hostname` (`hostname`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `user` (
  `id` mediumint(8) unsigned NOT NULL AUTO_INCREMENT,
  `uid` int(10) unsigned DEFAULT NULL,
  `unityid` varchar(80) NOT NULL DEFAULT '',
  `affiliationid` mediumint(8) unsigned NOT NULL DEFAULT '1',
  `email` varchar(80) NOT NULL,
  `usepublickeys` tinyint(1) unsigned NOT NULL DEFAULT '0',
  `sshpublickeys` text,
  PRIMARY KEY (`id`),
  UNIQUE KEY `unityid` (`unityid`,`affiliationid`),
  UNIQUE KEY `uid` (`uid`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

INSERT INTO `user` (`id`, `uid`, `unityid`, `email`) VALUES
(1, NULL, 'admin', 'root@localhost'), (2, NULL, 'vclreload', ''), (3, NULL, 'vclsystem', '');

CREATE TABLE `OS` (
  `id` tinyint(3) unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(20) NOT NULL,
  `prettyname` varchar(64) NOT NULL DEFAULT '',
  `type` varchar(30) NOT NULL,
  `installtype` varchar(30) NOT NULL DEFAULT 'image',
  PRIMARY KEY (`id`),
  UNIQUE KEY `name` (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `imagemeta` (
  `id` smallint(5) unsigned NOT NULL AUTO_INCREMENT,
  `rootaccess` tinyint(1) unsigned NOT NULL DEFAULT '1',
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `image` (
  `id` smallint(5) unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(70) NOT NULL DEFAULT '',
  `prettyname` varchar(80) NOT NULL DEFAULT '',
  `OSid` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `imagemetaid` smallint(5) unsigned DEFAULT NULL,
  `minram` mediumint(8) unsigned NOT NULL DEFAULT '0',
  `minprocnumber` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `deleted` tinyint(1) unsigned NOT NULL DEFAULT '0',
  `lastupdate` datetime DEFAULT NULL,
  `size` smallint(5) unsigned NOT NULL DEFAULT '0',
  PRIMARY KEY (`id`),
  UNIQUE KEY `name` (`name`),
  UNIQUE KEY `prettyname` (`prettyname`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `imagerevision` (
  `id` mediumint(8) unsigned NOT NULL AUTO_INCREMENT,
  `imageid` smallint(5) unsigned NOT NULL,
  `revision` smallint(5) unsigned NOT NULL,
  `userid` mediumint(8) unsigned NOT NULL,
  `datecreated` datetime NOT NULL,
  `deleted` tinyint(1) unsigned NOT NULL,
  `production` tinyint(1) unsigned NOT NULL,
  `imagename` varchar(75) NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `production` (`production`,`imagename`),
  UNIQUE KEY `imageid` (`imageid`,`revision`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `vmprofile` (
  `id` smallint(5) unsigned NOT NULL AUTO_INCREMENT,
  `profilename` varchar(56) NOT NULL,
  `imageid` smallint(5) unsigned NOT NULL,
  `repositorypath` varchar(128) DEFAULT NULL,
  `datastorepath` varchar(128) NOT NULL,
  `vmpath` varchar(128) DEFAULT NULL,
  `virtualswitch0` varchar(80) NOT NULL DEFAULT 'VMnet0',
  `virtualswitch1` varchar(80) NOT NULL DEFAULT 'VMnet2',
  `virtualswitch2` varchar(80) DEFAULT NULL,
  `virtualswitch3` varchar(80) DEFAULT NULL,
  `vmdisk` enum('dedicated','shared') NOT NULL DEFAULT 'dedicated',
  `username` varchar(80) DEFAULT NULL,
  `password` varchar(256) DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `profilename` (`profilename`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `vmhost` (
  `id` smallint(5) unsigned NOT NULL AUTO_INCREMENT,
  `computerid` smallint(5) unsigned NOT NULL,
  `vmprofileid` smallint(5) unsigned NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `computerid_vmprofileid` (`computerid`,`vmprofileid`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `computer` (
  `id` smallint(5) unsigned NOT NULL AUTO_INCREMENT,
  `stateid` tinyint(5) unsigned NOT NULL DEFAULT '10',
  `vmhostid` smallint(5) unsigned DEFAULT NULL,
  `currentimageid` smallint(5) unsigned NOT NULL DEFAULT '1',
  `nextimageid` smallint(5) unsigned NOT NULL DEFAULT '1',
  `imagerevisionid` mediumint(8) unsigned NOT NULL DEFAULT '1',
  `RAM` mediumint(8) unsigned NOT NULL DEFAULT '0',
  `procnumber` tinyint(5) unsigned NOT NULL DEFAULT '1',
  `hostname` varchar(36) NOT NULL DEFAULT '',
  `IPaddress` varchar(15) NOT NULL DEFAULT '',
  `privateIPaddress` varchar(15) DEFAULT NULL,
  `eth0macaddress` varchar(17) DEFAULT NULL,
  `eth1macaddress` varchar(17) DEFAULT NULL,
  `type` enum('blade','lab','virtualmachine') NOT NULL DEFAULT 'blade',
  `provisioningid` smallint(5) unsigned NOT NULL,
  `deleted` tinyint(1) unsigned NOT NULL DEFAULT '0',
  `datedeleted` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  PRIMARY KEY (`id`),
  UNIQUE KEY `hostname` (`hostname`,`datedeleted`),
  KEY `vmhostid` (`vmhostid`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `request` (
  `id` mediumint(8) unsigned NOT NULL AUTO_INCREMENT,
  `stateid` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `userid` mediumint(8) unsigned NOT NULL DEFAULT '0',
  `laststateid` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `forimaging` tinyint(1) unsigned NOT NULL DEFAULT '0',
  `preload` tinyint(1) unsigned NOT NULL DEFAULT '0',
  `start` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  `end` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  `daterequested` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  `datemodified` datetime DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `stateid` (`stateid`),
  KEY `start` (`start`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `reservation` (
  `id` mediumint(8) unsigned NOT NULL AUTO_INCREMENT,
  `requestid` mediumint(8) unsigned NOT NULL DEFAULT '0',
  `computerid` smallint(5) unsigned NOT NULL DEFAULT '0',
  `imageid` smallint(5) unsigned NOT NULL DEFAULT '0',
  `imagerevisionid` mediumint(8) unsigned NOT NULL DEFAULT '0',
  `managementnodeid` smallint(5) unsigned NOT NULL DEFAULT '1',
  `remoteIP` varchar(15) DEFAULT NULL,
  `lastcheck` datetime DEFAULT '0000-00-00 00:00:00',
  `pw` varchar(40) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `managementnodeid` (`managementnodeid`),
  KEY `requestid` (`requestid`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

CREATE TABLE `reservationaccounts` (
  `reservationid` mediumint(8) unsigned NOT NULL,
  `userid` mediumint(8) unsigned NOT NULL,
  `password` varchar(50) DEFAULT NULL,
  UNIQUE KEY `reservationid` (`reservationid`,`userid`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
