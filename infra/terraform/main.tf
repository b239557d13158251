# Buckets and least-privilege IAM for emotiw on AWS (EKS with IRSA, or the Ray cluster
# launcher's instance profiles):
#   input   clips and label files                  scoring: read    training: read
#   output  the scores table                       scoring: write   training: -
#   models  MLflow artifacts, weights, features    scoring: read    training: read + write
# `terraform init && terraform apply -var oidc_provider_arn=... -var oidc_provider_url=...`

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "prefix" {
  type        = string
  default     = "emotiw"
  description = "Bucket and role name prefix (buckets: <prefix>-input, -output, -models)."
}

variable "namespace" {
  type        = string
  default     = "emotiw"
  description = "Kubernetes namespace of the Ray pods' service accounts."
}

variable "oidc_provider_arn" {
  type        = string
  description = "The EKS cluster's IAM OIDC provider ARN (IAM roles for service accounts)."
}

variable "oidc_provider_url" {
  type        = string
  description = "The same provider's URL without https:// (oidc.eks.<region>.amazonaws.com/id/...)."
}

locals {
  buckets = {
    input  = "${var.prefix}-input"
    output = "${var.prefix}-output"
    models = "${var.prefix}-models"
  }
}

resource "aws_s3_bucket" "data" {
  for_each = local.buckets
  bucket   = each.value
}

resource "aws_s3_bucket_versioning" "data" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  for_each = aws_s3_bucket.data
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  for_each                = aws_s3_bucket.data
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Chunks are uploaded to their final keys in one upload each (docs/exactly-once.md): a driver
# that dies mid-upload leaves an invisible incomplete multipart upload, aborted here after a
# day. Staging on S3 is only written by older versions; the next run recovers it anyway.
resource "aws_s3_bucket_lifecycle_configuration" "output" {
  bucket = aws_s3_bucket.data["output"].id
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  rule {
    id     = "abandoned-staging"
    status = "Enabled"
    filter {
      prefix = "scores/_staging/"
    }
    expiration {
      days = 7
    }
  }
}
