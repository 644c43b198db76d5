package cohorts

import (
	"strings"

	"github.com/nhs-hub/hub/ingest"
)

// Public domains: every key a breakdown may release is fixed here, never
// read from the data, so that releasing every key (zeros included) leaks
// nothing about who is in the dataset.
var (
	// Sexes are the published values of sex.
	Sexes = []string{"male", "female", "other", "unknown"}
	// EthnicityGroups are the NHS ethnic category groups.
	EthnicityGroups = []string{"White", "Mixed", "Asian", "Black", "Other", "Not stated"}
	// EncounterTypes are the published encounter types.
	EncounterTypes = []string{"gp", "outpatient", "inpatient", "ae"}
	// EncounterClasses are the published encounter classes (HL7 v3
	// ActEncounterCode in words), as ingest names them.
	EncounterClasses = ingest.EncounterClasses.Values()
	// AgeBands are five-year bands, "90+" last.
	AgeBands = []string{"0-4", "5-9", "10-14", "15-19", "20-24", "25-29", "30-34", "35-39", "40-44",
		"45-49", "50-54", "55-59", "60-64", "65-69", "70-74", "75-79", "80-84", "85-89", "90+"}
	// PostcodeAreas are the UK's postcode areas (and the Crown
	// dependencies'), the "region" of a breakdown or criterion.
	PostcodeAreas = strings.Fields(`AB AL B BA BB BD BH BL BN BR BS BT CA CB CF CH CM CO CR CT CV CW DA DD
		DE DG DH DL DN DT DY E EC EH EN EX FK FY G GL GU GY HA HD HG HP HR HS HU HX IG IM IP IV JE KA KT KW
		KY L LA LD LE LL LN LS LU M ME MK ML N NE NG NN NP NR NW OL OX PA PE PH PL PO PR RG RH RM S SA SE SG
		SK SL SM SN SO SP SR SS ST SW SY TA TD TF TN TQ TR TS TW UB W WA WC WD WF WN WR WS WV YO ZE`)
)

// Unknown is the key of patients whose value is missing or was generalised
// away by the k-anonymity check; it is part of every public domain.
const Unknown = "unknown"

// publicKeys are the breakdown keys and their domains (without Unknown;
// year's domain comes from the query's window).
var publicKeys = map[string][]string{
	"age_band":        AgeBands,
	"sex":             Sexes[:3],
	"region":          PostcodeAreas,
	"ethnicity_group": EthnicityGroups,
	"year":            nil,
}

// ageBand names the five-year band of an age in years.
func ageBand(age int) string {
	return AgeBands[min(max(age, 0)/5, len(AgeBands)-1)]
}
