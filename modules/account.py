"""Facts about the target account and region, looked up once at plan time."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktf_cdktf_provider_aws.data_aws_partition import DataAwsPartition
from cdktf_cdktf_provider_aws.data_aws_region import DataAwsRegion
from constructs import Construct


class Account(Construct):
    """Account id, partition and region, for ARNs and service principals."""

    def __init__(self, scope: Construct, id_: str):
        super().__init__(scope, id_)
        self.account_id = DataAwsCallerIdentity(self, "caller").account_id
        self.partition = DataAwsPartition(self, "partition").partition
        region = DataAwsRegion(self, "region")
        self.region = region.name
